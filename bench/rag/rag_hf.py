#!/usr/bin/env python3
"""rag_hf.py — the outside baseline of the RAG serving benchmark: PyTorch + transformers.

On the Llama-3-8B shape (random bf16 weights, sdpa attention, as bench/python/hf_baseline.py),
measures the service time of one RAG request without any cache: full prefill of a prompt of
1 + k*chunk + query tokens (time to first token), then `gen` decode steps. A transformers
`generate()` server answers one request at a time, so the latency under an open-loop Poisson
load follows from these measured service times by a FIFO single-server queue, simulated with
the same request count at each arrival rate (seeded). Writes JSON for rag_report.py.
Random weights: timing only.
"""
import argparse
import json
import random
import sys
import os

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from hf_baseline import build, cuda_time  # noqa: E402


def quantile(v, q):
    v = sorted(v)
    i = max(0, min(len(v) - 1, int(-(-q * len(v) // 1)) - 1))
    return v[i]


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--query", type=int, default=32)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--rates", type=float, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    model, cfg = build("llama3-8b", a.seed)
    n = 1 + a.k * a.chunk + a.query
    g = torch.Generator(device="cuda").manual_seed(a.seed)
    ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda", generator=g)
    prefill_ms, _ = cuda_time(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1), 1, a.iters)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    nxt = torch.randint(0, cfg.vocab_size, (1, 1), device="cuda", generator=g)

    def step():
        model(input_ids=nxt, past_key_values=cache, use_cache=True)
        cache.crop(n)

    step_ms, _ = cuda_time(step, 2, max(a.iters, 10))
    service = prefill_ms + a.gen * step_ms
    print(f"transformers: prompt {n} tokens: prefill {prefill_ms:.1f} ms, decode step {step_ms:.2f} ms, "
          f"request {service:.1f} ms (gen {a.gen})", flush=True)
    runs = []
    for rate in a.rates:
        rng = random.Random(a.seed * 7919 + int(rate * 1000))
        t, free, ttft, e2e = 0.0, 0.0, [], []
        for _ in range(a.requests):
            t += rng.expovariate(rate) * 1000.0
            start = max(t, free)
            ttft.append(start - t + prefill_ms)
            free = start + service
            e2e.append(free - t)
        wall = max(free, t)
        runs.append({"mode": "transformers", "rate": rate, "ttft_ms_p50": quantile(ttft, 0.5),
                     "ttft_ms_p99": quantile(ttft, 0.99), "e2e_ms_p50": quantile(e2e, 0.5),
                     "e2e_ms_p99": quantile(e2e, 0.99), "req_per_s": a.requests / (wall / 1000.0),
                     "gpu_ms_per_request": service, "recompute_fraction": 1.0})
        print(f"transformers rate {rate:5.2f}/s: TTFT p50 {runs[-1]['ttft_ms_p50']:.1f} ms, "
              f"p99 {runs[-1]['ttft_ms_p99']:.1f} ms", flush=True)
    with open(a.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "prompt_tokens": n, "prefill_ms": prefill_ms,
                   "decode_step_ms": step_ms, "gen": a.gen, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
