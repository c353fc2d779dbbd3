#!/usr/bin/env python3
"""rag_report.py — tables (and plots where matplotlib exists) of the RAG serving benchmark.

Reads the `ragkv bench serve --json` files of scripts/gpu-bench.d/40-rag.sh (one per mode and
arrival rate, named MODE-RATE.json), transformers' numbers (rag_hf.py) and ragkvd's /metrics
text, prints per mode and rate: TTFT p50/p99, end-to-end p50, achieved throughput, hit rate,
recompute fraction; then per mode the throughput at the SLO (the highest offered rate whose
TTFT p99 stays within --slo-ms) and the TTFT p50 ratio to full prefill at the lowest rate.
Writes everything to --json and, with matplotlib, PNG plots (TTFT vs rate per mode;
throughput at SLO).
"""
import argparse
import glob
import json
import os


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def metrics(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                parts = line.split()
                if len(parts) == 2:
                    try:
                        out[parts[0]] = float(parts[1])
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--hf")
    ap.add_argument("--metrics")
    ap.add_argument("--slo-ms", type=float, default=1000.0)
    ap.add_argument("--json", required=True)
    ap.add_argument("--png-prefix")
    a = ap.parse_args()
    runs = []
    for p in sorted(glob.glob(os.path.join(a.runs, "*.json"))):
        r = load(p)
        if r:
            runs.append(r)
    hf = load(a.hf) if a.hf else None
    if hf:
        runs += hf["runs"]
    m = metrics(a.metrics) if a.metrics else {}
    modes = []
    for r in runs:
        if r["mode"] not in modes:
            modes.append(r["mode"])
    print("\n| mode | rate req/s | achieved req/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | hit rate | recompute |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        for r in sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rate"]):
            print(f"| {mode} | {r['rate']:g} | {r['req_per_s']:.2f} | {r['ttft_ms_p50']:.1f} | {r['ttft_ms_p99']:.1f} | "
                  f"{r['e2e_ms_p50']:.1f} | {r.get('hit_rate', 0):.3f} | {r.get('recompute_fraction', 0):.3f} |")
    base = {}
    for r in runs:
        if r["mode"] == "full":
            if not base or r["rate"] < base["rate"]:
                base = r
    summary = []
    print(f"\n| mode | throughput at TTFT p99 <= {a.slo_ms:g} ms (req/s) | TTFT p50 at the lowest rate | vs full |")
    print("|---|---:|---:|---:|")
    for mode in modes:
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rate"])
        ok = [r for r in rs if r.get("errors", 0) == 0 and r["ttft_ms_p99"] <= a.slo_ms]
        thr = max((r["req_per_s"] for r in ok), default=0.0)
        low = rs[0]["ttft_ms_p50"] if rs else float("nan")
        vs = base["ttft_ms_p50"] / low if base and low > 0 else None
        summary.append({"mode": mode, "throughput_at_slo": thr, "ttft_p50_low_rate_ms": low, "speedup_vs_full": vs})
        print(f"| {mode} | {thr:.2f} | {low:.1f} | {f'{vs:.2f}x' if vs else '-'} |")
    chunks = sum(v for k, v in m.items() if k.startswith("ragkv_tenant_chunks"))
    clen = next((r["chunk_len"] for r in runs if "chunk_len" in r), 0)
    bpt = m.get("ragkv_store_disk_bytes", 0) / (chunks * clen) if chunks and clen else None
    if bpt:
        print(f"\nbytes per cached token (compressed KV on disk / cached tokens): {bpt:.1f}")
    stored = {k: v for k, v in m.items() if "bytes" in k or "chunks" in k or "tokens" in k}
    if stored:
        print("\nragkvd /metrics after the runs (storage):")
        for k, v in sorted(stored.items()):
            print(f"  {k} {v:g}")
    with open(a.json, "w") as f:
        json.dump({"runs": runs, "summary": summary, "slo_ms": a.slo_ms, "bytes_per_cached_token": bpt, "hf": hf,
                   "metrics": m}, f, indent=1)
    if not a.png_prefix:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib here: plots skipped; rag.json has the data)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in modes:
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rate"])
        ax.plot([r["rate"] for r in rs], [r["ttft_ms_p50"] for r in rs], marker="o", label=mode)
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("TTFT p50 (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(a.png_prefix + "ttft-vs-rate.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([s["mode"] for s in summary], [s["throughput_at_slo"] for s in summary])
    ax.set_ylabel(f"req/s at TTFT p99 <= {a.slo_ms:g} ms")
    fig.tight_layout()
    fig.savefig(a.png_prefix + "throughput-at-slo.png", dpi=120)


if __name__ == "__main__":
    main()
