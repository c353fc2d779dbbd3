#!/usr/bin/env python3
"""Side by side: `ragkv bench blend` runs (TTFT per mode and cache form) and transformers' full
prefill of the same prompt lengths (bench/python/hf_baseline.py). Prints a table with each
ragkv TTFT as a fraction of transformers' and writes one JSON with everything."""
import argparse
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hf", required=True, help="hf_baseline.py --json output")
    ap.add_argument("--runs", nargs="+", required=True, help="ragkv bench blend --json outputs")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    hf = json.load(open(a.hf))
    hf_ms = {p["tokens"]: p["ms_median"] for p in hf.get("prefill", [])}
    rows = []
    for path in a.runs:
        r = json.load(open(path))
        for run in r["runs"]:
            ref = hf_ms.get(run["prompt_tokens"])
            rows.append(dict(run, cache=r["cache"], codec=r["codec"], math=r["math"], hf_ms=ref,
                             vs_hf=(run["ttft_ms_median"] / ref) if ref else None))
    print(f"{'cache':26} {'chunks':>6} {'tokens':>7} {'mode':11} {'ttft ms':>9} {'decode ms':>9} "
          f"{'recomp':>7} {'hf full ms':>10} {'x of hf':>8}")
    for w in rows:
        frac = w["recomputed"] / w["prompt_tokens"]
        hf_s = f"{w['hf_ms']:10.1f}" if w["hf_ms"] else f"{'-':>10}"
        vs = f"{w['vs_hf']:8.3f}" if w["vs_hf"] else f"{'-':>8}"
        print(f"{w['cache']:26} {w['chunks']:6d} {w['prompt_tokens']:7d} {w['mode']:11} "
              f"{w['ttft_ms_median']:9.1f} {w['decode_ms_median']:9.1f} {frac:7.3f} {hf_s} {vs}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hf": hf, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
