"""Checks that models exported by shoucuo load and compute the same things in transformers and
llama.cpp. Not part of CI. Run from the repository root:

    cargo build --release
    ~/peers-venv/bin/python tools/verify_interop.py [--llama-build /tmp/llama-build]

For each shape (GQA with head_dim != hidden/heads and an untied head; tied multi-head saved as
sharded bf16 by transformers itself) it: makes a random LlamaForCausalLM with transformers,
`shoucuo import --from hf`, `shoucuo export --format hf`, loads the export in transformers and
compares weights/logits with the source, compares transformers' greedy continuation with
`shoucuo generate --temperature 0`, then exports GGUF and (if llama.cpp is built) compares
llama-simple's greedy continuation and llama-tokenize's ids with ours.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

BIN = "target/release/shoucuo"
TOK = "tests/fixtures/tok_small"
PROMPT = "秦川雄帝宅，函谷壮皇居。"
N = 32

SHAPES = {
    "gqa-free-head-dim-untied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                     tie_word_embeddings=False, dtype=torch.float32, shard=None),
    "mha-tied-bf16-sharded": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                                  tie_word_embeddings=True, dtype=torch.bfloat16, shard="40KB"),
}
# transformers rejects this one (hidden 60 is not a multiple of 8 heads); llama.cpp should load it.
LLAMA_CPP_ONLY = dict(hidden_size=60, num_attention_heads=8, num_key_value_heads=2, head_dim=12)


def sh(*args):
    r = subprocess.run(args, capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        sys.exit(f"FAILED: {' '.join(args)}\n{r.stderr}")
    return r.stdout


def make_source(path, spec):
    shard, dtype = spec.pop("shard"), spec.pop("dtype")
    cfg = LlamaConfig(vocab_size=800, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=128,
                      rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.25, bos_token_id=0,
                      eos_token_id=0, **spec)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    m.save_pretrained(path, safe_serialization=True, **kw)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOK, f), path)
    # Reload in f32: `.to(bf16).float()` would keep a bf16-rounded RoPE inv_freq buffer.
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def make_raw_source(path, spec):
    """A random Llama directory written without transformers (which would refuse the shape)."""
    from safetensors.torch import save_file
    d, h, kv, hd, f, v = spec["hidden_size"], spec["num_attention_heads"], spec["num_key_value_heads"], \
        spec["head_dim"], 128, 800
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.25
    t = {"model.embed_tokens.weight": rnd(v, d), "model.norm.weight": torch.ones(d)}
    for l in range(2):
        p = f"model.layers.{l}."
        t.update({p + "input_layernorm.weight": torch.ones(d), p + "post_attention_layernorm.weight": torch.ones(d),
                  p + "self_attn.q_proj.weight": rnd(h * hd, d), p + "self_attn.k_proj.weight": rnd(kv * hd, d),
                  p + "self_attn.v_proj.weight": rnd(kv * hd, d), p + "self_attn.o_proj.weight": rnd(d, h * hd),
                  p + "mlp.gate_proj.weight": rnd(f, d), p + "mlp.up_proj.weight": rnd(f, d),
                  p + "mlp.down_proj.weight": rnd(d, f)})
    os.makedirs(path)
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=v, intermediate_size=f,
               num_hidden_layers=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, **spec)
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOK, fn), path)


def llama_cpp_greedy(llama, gguf):
    out = sh(os.path.join(llama, "llama-completion"), "-m", gguf, "-p", PROMPT, "-n", str(N), "--temp", "0",
             "-ctk", "f32", "-ctv", "f32", "-t", "1", "-no-cnv", "--no-warmup", "--special")
    return out[len(PROMPT):].rstrip("\n")


def ours_greedy(model_dir):
    out = sh(BIN, "generate", "--model", model_dir, "--prompt", PROMPT, "--temperature", "0",
             "--max-new-tokens", str(N), "--kv-cache", "f32", "--threads", "2")
    return out[len(PROMPT):].rstrip("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-build", default="/tmp/llama-build")
    ap.add_argument("--keep", action="store_true", help="keep the temporary models and print where")
    a = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(TOK, "tokenizer.json"))
    ids = tok.encode(PROMPT).ids
    results = {}
    work = tempfile.mkdtemp(prefix="shoucuo-interop-")
    for name, spec in SHAPES.items():
        r = results[name] = {}
        src, imp, exp = (os.path.join(work, f"{name}-{s}") for s in ("src", "imported", "hf"))
        ref = make_source(src, dict(spec))
        r["source_files"] = sorted(f for f in os.listdir(src) if "safetensors" in f)
        sh(BIN, "import", "--from", "hf", src, "--out", imp)
        sh(BIN, "export", "--model", imp, "--format", "hf", "--out", exp)
        hf = LlamaForCausalLM.from_pretrained(exp, dtype=torch.float32).eval()
        x = torch.tensor([ids])
        with torch.no_grad():
            lt, lr = hf(x).logits, ref(x).logits
        r["max_abs_logit_diff_export_vs_source"] = float((lt - lr).abs().max())
        with torch.no_grad():
            g = hf.generate(x, max_new_tokens=N, do_sample=False, eos_token_id=[0, 2], pad_token_id=3)
        theirs = tok.decode(g[0, len(ids):].tolist(), skip_special_tokens=False)
        with torch.no_grad():
            top2 = hf(g).logits[0, len(ids) - 1:-1].topk(2).values
        # Greedy paths can only be compared across engines where the top two logits are not tied.
        gaps = (top2[:, 0] - top2[:, 1]).tolist()
        r["top2_logit_gaps_min"] = round(min(gaps), 4)
        r["first_step_with_gap_below_0.01"] = next((i for i, v in enumerate(gaps) if v < 0.01), None)
        mine = ours_greedy(exp)
        r["transformers_greedy"] = theirs
        r["shoucuo_greedy"] = mine
        r["greedy_equal_transformers"] = theirs == mine

        llama = os.path.join(a.llama_build, "bin")
        if not os.path.isdir(llama):
            r["llama_cpp"] = "not built; skipped"
            continue
        for pre in ("qwen2", "kimi-k2"):
            gguf = os.path.join(work, f"{name}-{pre}.gguf")
            sh(BIN, "export", "--model", imp, "--format", "gguf", "--tokenizer-pre", pre, "--out", gguf)
            lines = [json.loads(l)["text"] for l in open("data/tang-poems-sample.jsonl", encoding="utf-8")][:100]
            same = 0
            for text in lines:
                got = sh(os.path.join(llama, "llama-tokenize"), "-m", gguf, "-p", text, "--ids", "--log-disable",
                         "--no-bos")
                same += json.loads(got.strip().splitlines()[-1]) == tok.encode(text).ids
            r[f"llama_tokenize_{pre}_docs_identical"] = f"{same}/{len(lines)}"
            if pre == "qwen2":
                out = sh(os.path.join(llama, "llama-simple"), "-m", gguf, "-n", str(N), PROMPT)
                r["llama_simple_greedy"] = out[len(PROMPT):].rstrip("\n")
                r["llama_simple_greedy_equal"] = r["llama_simple_greedy"] == mine
                completion = os.path.join(llama, "llama-completion")
                if os.path.exists(completion):
                    # f32 KV cache, one thread: removes llama.cpp's f16 cache rounding from the comparison.
                    out = sh(completion, "-m", gguf, "-p", PROMPT, "-n", str(N), "--temp", "0", "-ctk", "f32",
                             "-ctv", "f32", "-t", "1", "-no-cnv", "--no-warmup", "--special")
                    r["llama_completion_f32kv_greedy"] = out[len(PROMPT):].rstrip("\n")
                    r["llama_completion_f32kv_greedy_equal"] = r["llama_completion_f32kv_greedy"] == mine
    llama = os.path.join(a.llama_build, "bin")
    if os.path.exists(os.path.join(llama, "llama-completion")):
        r = results["hidden-60-8x12-gqa (transformers rejects)"] = {}
        src, imp, gguf = (os.path.join(work, f"odd-{s}") for s in ("src", "imported", "f32.gguf"))
        make_raw_source(src, LLAMA_CPP_ONLY)
        sh(BIN, "import", "--from", "hf", src, "--out", imp)
        sh(BIN, "export", "--model", imp, "--format", "gguf", "--out", gguf)
        mine, theirs = ours_greedy(imp), llama_cpp_greedy(llama, gguf)
        r.update(shoucuo_greedy=mine, llama_cpp_greedy=theirs, llama_cpp_greedy_equal=mine == theirs)
    print(json.dumps(results, ensure_ascii=False, indent=1))
    if a.keep:
        print(f"models kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
