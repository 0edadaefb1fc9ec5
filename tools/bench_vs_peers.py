#!/usr/bin/env python3
"""Side-by-side speed comparison of shoucuo and its peer yardsticks, in one run.

Runs each side ROUNDS times, interleaved (ours, then each peer, per round) so that machine noise
hits both alike, and prints medians and ratios as a Markdown table plus one JSON line.

  train:  `shoucuo bench train` vs the PyTorch yardsticks (peers/bench_train.py: plain PyTorch,
          transformers, torch.compile; fp32, 2 threads)
  decode: `shoucuo bench decode` vs llama.cpp's llama-bench (f32 and q8_0 GGUF, batch 1) and
          llama-batched-bench (16 sequences)

usage:
  python3 tools/bench_vs_peers.py train  --peers ../shared/peers --python ~/peers-venv/bin/python
  python3 tools/bench_vs_peers.py decode --peers ../shared/peers --python ~/peers-venv/bin/python \
      --llama-bin /tmp/llama-build/bin

Needs a release build (`cargo build --release`), the peers' Python environment (torch, transformers;
`gguf` for decode) and, for decode, a llama.cpp build with llama-bench, llama-batched-bench and
llama-quantize (see the peers' README). Not part of CI.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOUCUO = os.path.join(ROOT, "target", "release", "shoucuo")


def run(cmd, cwd=None):
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)
        return None
    return p.stdout


def last_json(out):
    return json.loads(out.strip().splitlines()[-1]) if out else None


def peer_result(out):
    for line in (out or "").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def train(a):
    presets = a.presets or ["tiny", "small-zh", "microstories"]
    peers = {
        "pytorch": [],
        "transformers": ["--hf"],
        "torch.compile": ["--compile"],
    }
    rows = []
    for preset in presets:
        runs = {"shoucuo": []} | {k: [] for k in peers}
        rss = {"shoucuo": []} | {k: [] for k in peers}
        extra = {}
        for r in range(a.rounds):
            out = last_json(run([SHOUCUO, "bench", "train", "--preset", preset, "--steps", str(a.steps),
                                 "--warmup", "2", "--threads", "2"]))
            if out:
                runs["shoucuo"].append(out["tokens_per_s"])
                rss["shoucuo"].append(out["peak_rss_mib"])
                extra = {k: out[k] for k in ("gemm_gflops", "model_gflops_per_s", "mfu_vs_gemm", "params")}
            for name, flags in peers.items():
                if name == "transformers" and preset == "microstories":
                    continue  # transformers rejects hidden 512 with 6 heads (see peers/FIGURES.md)
                res = peer_result(run([a.python, "bench_train.py", "--config", preset, "--threads", "2",
                                       "--steps", str(a.steps), "--warmup", "2", *flags], cwd=a.peers))
                if res:
                    runs[name].append(res["tokens_per_s"])
                    rss[name].append(res["peak_rss_mib"])
        med = {k: median(v) for k, v in runs.items()}
        best = max((k for k in peers if med[k]), key=lambda k: med[k])
        best_rss = median(rss[best])
        rows.append(dict(preset=preset, ours=med["shoucuo"], peers={k: med[k] for k in peers}, best_peer=best,
                         speed_ratio=med["shoucuo"] / med[best], ours_rss_mib=median(rss["shoucuo"]),
                         best_peer_rss_mib=best_rss, rss_ratio=median(rss["shoucuo"]) / best_rss,
                         runs=runs, **extra))
    print("| preset | shoucuo tok/s | PyTorch | transformers | torch.compile | ours / best | peak RSS ours / best peer | GEMM GFLOP/s | model GFLOP/s | MFU vs GEMM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda x: f"{x:.0f}" if x else "—"
    for r in rows:
        p = r["peers"]
        print(f"| {r['preset']} | {fmt(r['ours'])} | {fmt(p['pytorch'])} | {fmt(p['transformers'])} | "
              f"{fmt(p['torch.compile'])} | **{r['speed_ratio']:.2f}×** ({r['best_peer']}) | "
              f"{fmt(r['ours_rss_mib'])} / {fmt(r['best_peer_rss_mib'])} MiB = {r['rss_ratio']:.2f} | "
              f"{fmt(r.get('gemm_gflops'))} | {fmt(r.get('model_gflops_per_s'))} | {r.get('mfu_vs_gemm', 0):.2f} |")
    print(json.dumps(rows))


def llama_bench(binary, gguf, threads):
    out = run([binary, "-m", gguf, "-p", "0", "-n", "256", "-t", str(threads), "-r", "3", "-o", "json"])
    if not out:
        return None
    for r in json.loads(out):
        if r.get("n_gen", 0) > 0:
            return r["avg_ts"]
    return None


def llama_batched(binary, gguf, threads, npl):
    out = run([binary, "-m", gguf, "-c", "8192", "-npp", "32", "-ntg", "128", "-npl", str(npl), "-t", str(threads)])
    # table rows: |  PP |  TG |  B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    for line in (out or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[2] == str(npl) and re.fullmatch(r"[0-9.]+", cells[7]):
            return float(cells[7])
    return None


def decode(a):
    presets = a.presets or ["tiny", "small-zh"]
    b = a.llama_bin
    rows = []
    for preset in presets:
        f32 = f"/tmp/bench-{preset}-f32.gguf"
        q8 = f"/tmp/bench-{preset}-q8_0.gguf"
        if not os.path.exists(f32):
            run([a.python, os.path.join(a.peers, "make_gguf.py"), preset, f32])
        if not os.path.exists(q8):
            run([os.path.join(b, "llama-quantize"), f32, q8, "q8_0"])
        res = {k: [] for k in ("ours_f32", "ours_q8", "ours_b16", "ours_q8_b16", "llama_f32", "llama_q8", "llama_f32_b16", "llama_q8_b16")}
        for r in range(a.rounds):
            for quant, key in (("f32", "ours_f32"), ("q8", "ours_q8")):
                for batch, k in ((1, key), (16, key.replace("f32", "b16") if quant == "f32" else "ours_q8_b16")):
                    # the shapes llama.cpp measures: tg256 after a 32-token prompt at batch 1 (llama-bench
                    # starts from an empty context), 32 + 128 per sequence at 16 (llama-batched-bench)
                    gen = "256" if batch == 1 else "128"
                    out = last_json(run([SHOUCUO, "bench", "decode", "--preset", preset, "--quant", quant,
                                         "--batch", str(batch), "--prompt", "32", "--gen", gen, "--threads", "2"]))
                    if out:
                        res[k].append(out["decode_tokens_per_s"] if batch == 1 else out["aggregate_tokens_per_s"])
            res["llama_f32"].append(llama_bench(os.path.join(b, "llama-bench"), f32, 2))
            res["llama_q8"].append(llama_bench(os.path.join(b, "llama-bench"), q8, 2))
            res["llama_f32_b16"].append(llama_batched(os.path.join(b, "llama-batched-bench"), f32, 2, 16))
            res["llama_q8_b16"].append(llama_batched(os.path.join(b, "llama-batched-bench"), q8, 2, 16))
        med = {k: median(v) for k, v in res.items()}
        rows.append(dict(preset=preset, **med, runs=res))
    print("| preset | b=1 f32 ours / llama.cpp | b=1 q8_0 ours / llama.cpp | 16 seqs f32 ours / llama.cpp | 16 seqs q8_0 ours / llama.cpp | ours 16 seqs / ours b=1 (f32 / q8_0) |")
    print("|---|---|---|---|---|---|")
    def pair(o, l):
        return f"{o:.0f} / {l:.0f} = **{o / l:.2f}×**" if o and l else "—"
    for r in rows:
        own = " / ".join(f"{r[b] / r[a]:.1f}×" if r[a] and r[b] else "—"
                         for a, b in (("ours_f32", "ours_b16"), ("ours_q8", "ours_q8_b16")))
        print(f"| {r['preset']} | {pair(r['ours_f32'], r['llama_f32'])} | {pair(r['ours_q8'], r['llama_q8'])} | "
              f"{pair(r['ours_b16'], r['llama_f32_b16'])} | {pair(r['ours_q8_b16'], r['llama_q8_b16'])} | {own} |")
    print(json.dumps(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "decode"])
    ap.add_argument("--peers", default=os.path.join(ROOT, "..", "shared", "peers"))
    ap.add_argument("--python", default=os.path.expanduser("~/peers-venv/bin/python"))
    ap.add_argument("--llama-bin", default="/tmp/llama-build/bin")
    ap.add_argument("--presets", nargs="*")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    a = ap.parse_args()
    a.peers = os.path.abspath(a.peers)
    train(a) if a.what == "train" else decode(a)


if __name__ == "__main__":
    main()
