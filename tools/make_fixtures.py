"""Golden fixtures for the training engine, from PyTorch.

Builds small LLaMA models (the same maths as shoucuo: RMSNorm, rotate-half RoPE, GQA, SwiGLU,
free head_dim, tied or untied embeddings), runs one forward/backward on a batch with masked
targets, then three AdamW steps (warm-up + cosine lr, grad clipping, weight decay on matrices),
and writes everything shoucuo's tests compare against into tests/fixtures/engine_<name>.safetensors:

  weights with HF names, tokens, targets (-100 = ignored), logits, loss,
  grad.<name> after one backward, step3.<name> after three AdamW steps;
  the model config and train settings as JSON in the file's metadata.

Run (needs torch and safetensors):  python tools/make_fixtures.py
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

CONFIGS = {
    # GQA (4 query heads on 2 kv heads), heads * head_dim = 24 != dim = 16, tied embeddings
    "gqa_tied": dict(vocab_size=37, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=6, ffn_hidden=40,
                     tie_embeddings=True),
    # plain multi-head attention, head_dim = dim / n_heads, untied lm_head
    "mha_untied": dict(vocab_size=29, dim=16, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=8, ffn_hidden=24,
                       tie_embeddings=False),
}
BATCH, SEQ = 2, 7
TRAIN = dict(lr=1e-2, min_lr=1e-3, warmup_steps=2, max_steps=3, beta1=0.9, beta2=0.95, eps=1e-8,
             weight_decay=0.1, grad_clip=1.0)


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta=10000.0):
    # x: [B, T, H, hd], rotate-half: pairs (i, i + hd/2)
    t, hd = x.shape[1], x.shape[3]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()[None, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()[None, :, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(p, c, tokens):
    b, t = tokens.shape
    h, kv, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    x = p["model.embed_tokens.weight"][tokens]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for l in range(c["n_layers"]):
        pre = f"model.layers.{l}."
        a = rmsnorm(x, p[pre + "input_layernorm.weight"])
        q = (a @ p[pre + "self_attn.q_proj.weight"].T).view(b, t, h, hd)
        k = (a @ p[pre + "self_attn.k_proj.weight"].T).view(b, t, kv, hd)
        v = (a @ p[pre + "self_attn.v_proj.weight"].T).view(b, t, kv, hd)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(h // kv, dim=2)
        v = v.repeat_interleave(h // kv, dim=2)
        att = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) / math.sqrt(hd) + mask
        o = (att.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(b, t, h * hd)
        x = x + o @ p[pre + "self_attn.o_proj.weight"].T
        m = rmsnorm(x, p[pre + "post_attention_layernorm.weight"])
        g = m @ p[pre + "mlp.gate_proj.weight"].T
        u = m @ p[pre + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ p[pre + "mlp.down_proj.weight"].T
    x = rmsnorm(x, p["model.norm.weight"])
    head = p["model.embed_tokens.weight"] if c["tie_embeddings"] else p["lm_head.weight"]
    return x @ head.T


def init(c, gen):
    d, f, v = c["dim"], c["ffn_hidden"], c["vocab_size"]
    qd, kd = c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, d)}
    for l in range(c["n_layers"]):
        pre = f"model.layers.{l}."
        shapes.update({
            pre + "input_layernorm.weight": (d,), pre + "self_attn.q_proj.weight": (qd, d),
            pre + "self_attn.k_proj.weight": (kd, d), pre + "self_attn.v_proj.weight": (kd, d),
            pre + "self_attn.o_proj.weight": (d, qd), pre + "post_attention_layernorm.weight": (d,),
            pre + "mlp.gate_proj.weight": (f, d), pre + "mlp.up_proj.weight": (f, d),
            pre + "mlp.down_proj.weight": (d, f),
        })
    shapes["model.norm.weight"] = (d,)
    if not c["tie_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    p = {}
    for name, s in shapes.items():
        if len(s) == 1:
            p[name] = 1.0 + 0.1 * torch.randn(s, generator=gen)
        else:
            p[name] = 0.2 * torch.randn(s, generator=gen)
    return p


def lr_at(step):
    t = TRAIN
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    prog = min((step - t["warmup_steps"]) / (t["max_steps"] - t["warmup_steps"]), 1.0)
    return t["min_lr"] + 0.5 * (1 + math.cos(math.pi * prog)) * (t["lr"] - t["min_lr"])


def make(name, c, seed):
    gen = torch.Generator().manual_seed(seed)
    p = {k: v.clone().requires_grad_(True) for k, v in init(c, gen).items()}
    weights = {k: v.detach().clone() for k, v in p.items()}
    tokens = torch.randint(0, c["vocab_size"], (BATCH, SEQ), generator=gen)
    targets = torch.randint(0, c["vocab_size"], (BATCH, SEQ), generator=gen)
    targets[0, 2] = -100
    targets[1, 0] = -100
    targets[1, 5] = -100

    logits = forward(p, c, tokens)
    loss = F.cross_entropy(logits.reshape(-1, c["vocab_size"]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    out = {k: v for k, v in weights.items()}
    out["tokens"] = tokens.to(torch.int64)
    out["targets"] = targets.to(torch.int64)
    out["logits"] = logits.detach()
    out["loss"] = loss.detach().reshape(1)
    out.update({f"grad.{k}": v.grad.detach().clone() for k, v in p.items()})

    t = TRAIN
    decay = [v for v in p.values() if v.dim() == 2]
    no_decay = [v for v in p.values() if v.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"], foreach=False)
    for step in range(3):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad()
        logits = forward(p, c, tokens)
        loss = F.cross_entropy(logits.reshape(-1, c["vocab_size"]), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), t["grad_clip"])
        opt.step()
    out.update({f"step3.{k}": v.detach().clone() for k, v in p.items()})
    meta = {"config": json.dumps(c), "train": json.dumps(t), "batch": str(BATCH), "seq": str(SEQ)}
    path = OUT / f"engine_{name}.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata=meta)
    print(f"{path}: loss {out['loss'].item():.6f}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    torch.manual_seed(0)
    for i, (name, c) in enumerate(CONFIGS.items()):
        make(name, c, 1234 + i)
