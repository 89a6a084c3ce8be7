#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench matmul` (never run by the tool itself).

For each shape MxKxN, times torch.matmul in the two forms headroom runs, W [N, K] row-major:
fwd x[M,K] @ W.T and bwd dy[M,N] @ W, in f32 and bf16 (bf16 in and out, f32 accumulation:
oneDNN on x86), best of repetitions lasting --secs. Prints one JSON object
{"fwd f32 M K N": seconds, ...}.
"""
import argparse, json, time

import torch


def best(fn, secs):
    fn()
    b, start, reps = float("inf"), time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - start < secs:
        t = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t)
        reps += 1
    return b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True, help="comma-separated MxKxN")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--secs", type=float, default=0.4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = {}
    with torch.no_grad():
        for s in a.shapes.split(","):
            m, k, n = (int(v) for v in s.split("x"))
            for dt, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
                w = (torch.randn(n, k) * 0.02).to(dt)
                x, dy = torch.randn(m, k).to(dt), torch.randn(m, n).to(dt)
                out[f"fwd {name} {m} {k} {n}"] = best(lambda: torch.matmul(x, w.t()), a.secs)
                out[f"bwd {name} {m} {k} {n}"] = best(lambda: torch.matmul(dy, w), a.secs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
