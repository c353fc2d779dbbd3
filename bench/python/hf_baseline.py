#!/usr/bin/env python3
"""hf_baseline.py — the outside baseline: PyTorch + Hugging Face transformers on the same GPU.

Times, on a Llama-3-8B-shaped LlamaForCausalLM with random bf16 weights and sdpa attention:
  - full prefill of N tokens (batch 1) for each N in --prefill (default 1024 4096 8192 16384):
    the time to first token of a RAG prompt without any cache;
  - one decode step at --ctx tokens of context (default 8192) for batch 1 and batch 32.
Prints a table and writes JSON (--json). Random weights: timing only, never quality.

    python3 bench/python/hf_baseline.py --json out.json
"""
import argparse
import json
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5),
}


def build(shape, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, attn_implementation="sdpa",
                      torch_dtype=torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    # initialise like a trained model's scale so activations stay finite
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.eval()
    return model, cfg


def cuda_time(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2], times[0]


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--prefill", type=int, nargs="*", default=[1024, 4096, 8192, 16384])
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    t0 = time.time()
    model, cfg = build(a.shape, a.seed)
    print(f"# {a.shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, bf16, "
          f"built in {time.time() - t0:.1f} s; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.cuda.get_device_name()}", flush=True)
    results = {"shape": a.shape, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "transformers": transformers.__version__, "prefill": [], "decode": []}
    g = torch.Generator(device="cuda").manual_seed(a.seed)

    for n in a.prefill:
        ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda", generator=g)
        # time to first token: the prompt's forward pass with only the last row's logits
        fn = lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1)
        med, best = cuda_time(fn, 1, a.iters)
        results["prefill"].append({"tokens": n, "ms_median": med, "ms_min": best})
        print(f"prefill {n:6d} tokens: median {med:8.2f} ms  min {best:8.2f} ms", flush=True)
        torch.cuda.empty_cache()

    for b in a.batches:
        ids = torch.randint(0, cfg.vocab_size, (b, a.ctx), device="cuda", generator=g)
        # fill the cache in slices along the sequence: a whole batch-32 x 8K prefill at once
        # needs more activation memory than the card has
        cache = None
        step_len = max(1, 16384 // b)
        for s0 in range(0, a.ctx, step_len):
            out = model(input_ids=ids[:, s0:s0 + step_len], past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
            cache = out.past_key_values
        del ids
        nxt = torch.randint(0, cfg.vocab_size, (b, 1), device="cuda", generator=g)
        crop = a.ctx

        def step():
            # one decode step at ctx context; crop back so every step sees the same length
            model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache.crop(crop)

        med, best = cuda_time(step, 2, max(a.iters, 10))
        results["decode"].append({"batch": b, "ctx": a.ctx, "ms_median": med, "ms_min": best})
        print(f"decode batch {b:3d} at {a.ctx} ctx: median {med:8.2f} ms  min {best:8.2f} ms", flush=True)
        del cache, out
        torch.cuda.empty_cache()

    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
