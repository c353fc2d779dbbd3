#!/usr/bin/env python3
"""side_by_side.py — ragkv's CUDA engine beside PyTorch + transformers, one table with ratios.

Reads the `ragkv bench engine --json` files in --engine-dir (bf16-prefill.json, bf16-decode.json
and optionally fp32.json, from scripts/gpu-bench.d/30-engine.sh) and transformers' numbers
(--hf, from bench/python/hf_baseline.py, same card, same run), prints a markdown table
(ratio = transformers / ragkv: above 1 means ragkv is faster) and writes everything to --json.
"""
import argparse
import json
import os


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine-dir", required=True)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    runs = []
    for name in ("bf16-prefill", "bf16-decode", "fp32"):
        r = load(os.path.join(a.engine_dir, name + ".json"))
        if r:
            r["run"] = name
            runs.append(r)
    hf = load(a.hf) or {"prefill": [], "decode": []}
    hp = {p["tokens"]: p["ms_median"] for p in hf.get("prefill", [])}
    hd = {(d["batch"], d["ctx"]): d["ms_median"] for d in hf.get("decode", [])}
    rows = []
    for r in runs:
        for p in r.get("prefill", []) if r["run"] != "bf16-decode" else []:
            rows.append({"op": f"prefill {p['tokens']} tokens", "math": r.get("math", ""),
                         "ragkv_ms": p["ms_median"], "hf_ms": hp.get(p["tokens"])})
        for d in r.get("decode", []) if r["run"] != "bf16-prefill" else []:
            rows.append({"op": f"decode batch {d['batch']} @ {d['ctx']} ctx", "math": r.get("math", ""),
                         "ragkv_ms": d["ms_median"], "hf_ms": hd.get((d["batch"], d["ctx"]))})
    for row in rows:
        row["ratio"] = row["hf_ms"] / row["ragkv_ms"] if row["hf_ms"] and row["ragkv_ms"] else None
    dev = hf.get("device", "?")
    print(f"\n### ragkv CUDA engine vs transformers {hf.get('transformers', '?')} (torch {hf.get('torch', '?')}), "
          f"{dev}, Llama-3-8B shape\n")
    print("| operation | ragkv mode | ragkv ms | transformers bf16 sdpa ms | speed-up (transformers / ragkv) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        hfs = f"{row['hf_ms']:.1f}" if row["hf_ms"] else "-"
        rs = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        print(f"| {row['op']} | {row['math']} | {row['ragkv_ms']:.1f} | {hfs} | {rs} |")
    with open(a.json, "w") as f:
        json.dump({"runs": runs, "hf": hf, "side_by_side": rows}, f, indent=1)


if __name__ == "__main__":
    main()
