#!/usr/bin/env python3
"""rag_report.py — tables (and plots where matplotlib exists) of the RAG serving benchmark.

Reads the `ragkv bench serve --json` files of scripts/gpu-bench.d/40-rag.sh (one per mode and
arrival rate, named MODE-RATE.json), transformers' numbers (rag_hf.py) and ragkvd's /metrics
text, prints per mode and rate: TTFT p50/p99, end-to-end p50, achieved throughput, hit rate,
recompute fraction; then per mode the throughput at the SLO (the highest offered rate whose
TTFT p99 stays within --slo-ms) and the TTFT p50 ratio to full prefill at the lowest rate.
With --quality (`ragkv blend eval --json` files of the real test models) it adds, per model,
each mode's quality against full prefill (next-token KL, top-1 agreement over a greedy
continuation) at its recompute fraction; with --codec (`ragkv codec eval --json`), the bytes
per cached token of every codec level. Writes everything to --json and PNG plots (TTFT vs rate
per mode; throughput at SLO; quality vs recompute fraction; bytes per token per codec level)
with matplotlib, else with gnuplot; without either, `--replot REPORT.json` draws them later
from the report on a machine that has one.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess


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


def plot(path, title, xlabel, ylabel, series, logy=False, bars=False):
    """One PNG: series = [(name, xs, ys)] (bars: one series, xs are labels). matplotlib, else
    gnuplot, else the gnuplot script and data next to path. Returns what was written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if bars:
            ax.bar([str(x) for x in series[0][1]], series[0][2])
            ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        else:
            for name, xs, ys in series:
                ax.plot(xs, ys, marker="o", label=name)
            ax.legend(fontsize=8)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
    except ImportError:
        pass
    if not shutil.which("gnuplot"):
        return None
    base = path[:-4] if path.endswith(".png") else path
    dat = base + ".dat"
    with open(dat, "w") as f:
        for i, (name, xs, ys) in enumerate(series):
            f.write(f"# {name}\n")
            for x, y in zip(xs, ys):
                f.write(f"\"{x}\" {y}\n" if bars else f"{x} {y}\n")
            f.write("\n\n")
    q = lambda t: t.replace('"', "'")
    gp = [f'set terminal pngcairo size 800,520 font ",10"', f'set output "{path}"', f'set title "{q(title)}"',
          f'set xlabel "{q(xlabel)}"', f'set ylabel "{q(ylabel)}"', "set grid", "set key outside right"]
    if logy:
        gp.append("set logscale y")
    if bars:
        gp += ["set style fill solid 0.8", "set boxwidth 0.7", "set xtics rotate by -60 font \",8\"", "unset key",
               f'plot "{dat}" using 0:2:xtic(1) with boxes']
    else:
        gp.append("plot " + ", ".join(f'"{dat}" index {i} using 1:2 with linespoints title "{q(n)}"'
                                      for i, (n, _, _) in enumerate(series)))
    r = subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", text=True)
    os.unlink(dat)
    return path if r.returncode == 0 else None


def draw(rep, prefix):
    """The four plots of a report (the --json file's content) as PREFIX*.png."""
    runs, summary, qual, cod = rep["runs"], rep["summary"], rep.get("quality") or {}, rep.get("codec")
    modes = list(dict.fromkeys(r["mode"] for r in runs))
    written = []
    ser = []
    for mode in modes:
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rate"])
        ser.append((mode, [r["rate"] for r in rs], [r["ttft_ms_p50"] for r in rs]))
    if ser:
        written.append(plot(prefix + "ttft-vs-rate.png", "TTFT p50 vs arrival rate", "arrival rate (requests/s)",
                            "TTFT p50 (ms)", ser, logy=True))
    if summary:
        written.append(plot(prefix + "throughput-at-slo.png", f"throughput at TTFT p99 <= {rep['slo_ms']:g} ms", "mode",
                            "requests/s", [("req/s", [x["mode"] for x in summary],
                                            [x["throughput_at_slo"] for x in summary])], bars=True))
    for name, q in qual.items():
        ser = []
        for mode in dict.fromkeys(r["mode"] for r in q["rows"]):
            rs = sorted((r for r in q["rows"] if r["mode"] == mode), key=lambda r: r["recomputed"])
            ser.append((mode, [r["recomputed"] for r in rs], [r["top1"] for r in rs]))
        written.append(plot(f"{prefix}quality-{name}.png", f"quality vs recompute, {name}",
                            "fraction of prompt tokens recomputed", "top-1 agreement with full prefill", ser))
    if cod:
        rows = [r for r in cod["rows"] if r["label"] == r["codec"] or "codebook" in r["label"] or r["codec"] == "q8"]
        written.append(plot(prefix + "bytes-per-token.png", "cached KV bytes per token (Llama-3-8B shape)",
                            "codec and level", "bytes per token", [("bytes", [r["label"] for r in rows],
                                                                    [r["bytes_per_token"] for r in rows])],
                            logy=True, bars=True))
    if None in written:
        print("\n(no matplotlib or gnuplot here: plots skipped; draw them elsewhere with "
              "bench/rag/rag_report.py --replot REPORT.json --png-prefix PREFIX)")
    else:
        print("\nplots: " + ", ".join(written))


def quality_rows(paths):
    """Per model: [(mode, ratio, recomputed, kl, top1)] from `ragkv blend eval --json` files."""
    out = {}
    for p in paths or []:
        d = load(p)
        if not d:
            continue
        name = os.path.basename(p).replace("quality-", "").replace(".json", "")
        out[name] = {"model": d.get("model"), "cases": d.get("cases"), "prompt_tokens": d.get("prompt_tokens"),
                     "rows": [{k: r[k] for k in ("mode", "ratio", "recomputed", "kl", "top1", "matched")}
                              for r in d["runs"]]}
    return out


def codec_rows(path):
    """[(label, bits/value, bytes per token, rel. L2)] from `ragkv codec eval --json`."""
    d = load(path) if path else None
    if not d:
        return None
    tokens = d["shape"][1]
    return {"shape": d["shape"], "rows": [{"label": r["label"], "codec": r["codec"], "level": r["level"],
                                           "bits_per_value": r["bits_per_value"], "bytes_per_token": r["bytes"] / tokens,
                                           "ratio_q8": r.get("ratio_q8"), "rel_l2": r.get("rel_l2")}
                                          for r in d["results"]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs")
    ap.add_argument("--replot", help="only draw the plots of a report written before (its --json)")
    ap.add_argument("--hf")
    ap.add_argument("--metrics")
    ap.add_argument("--slo-ms", type=float, default=1000.0)
    ap.add_argument("--json")
    ap.add_argument("--png-prefix")
    ap.add_argument("--quality", nargs="*", default=[])
    ap.add_argument("--codec")
    a = ap.parse_args()
    if a.replot:
        with open(a.replot) as f:
            draw(json.load(f), a.png_prefix or "rag-")
        return
    if not a.runs or not a.json:
        ap.error("--runs and --json are required (or --replot)")
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
    gpu = lambda r: f"{r['gpu_ms_per_request']:.1f}" if r.get("gpu_ms_per_request", -1) >= 0 else "-"
    print("\n| mode | rate req/s | achieved req/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | GPU ms/request | hit rate "
          "| recompute |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        for r in sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rate"]):
            print(f"| {mode} | {r['rate']:g} | {r['req_per_s']:.2f} | {r['ttft_ms_p50']:.1f} | {r['ttft_ms_p99']:.1f} | "
                  f"{r['e2e_ms_p50']:.1f} | {gpu(r)} | {r.get('hit_rate', 0):.3f} | {r.get('recompute_fraction', 0):.3f} |")
    base = {}
    for r in runs:
        if r["mode"] == "full":
            if not base or r["rate"] < base["rate"]:
                base = r
    summary = []
    # throughput at the SLO is a lower bound where even the highest offered rate met it ("+"):
    # more load might have been served; the most achieved at any rate bounds it from above
    # where the SLO failed at the top rate (the mode saturated)
    print(f"\n| mode | throughput at TTFT p99 <= {a.slo_ms:g} ms (req/s) | most achieved (req/s) "
          "| TTFT p50 at the lowest rate | vs full |")
    print("|---|---:|---:|---:|---:|")
    for mode in modes:
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["rate"])
        ok = [r for r in rs if r.get("errors", 0) == 0 and r["ttft_ms_p99"] <= a.slo_ms]
        thr = max((r["req_per_s"] for r in ok), default=0.0)
        top = bool(rs) and rs[-1] in ok
        most = max((r["req_per_s"] for r in rs if r.get("errors", 0) == 0), default=0.0)
        low = rs[0]["ttft_ms_p50"] if rs else float("nan")
        vs = base["ttft_ms_p50"] / low if base and low > 0 else None
        summary.append({"mode": mode, "throughput_at_slo": thr, "slo_met_at_top_rate": top,
                        "most_achieved_req_s": most, "ttft_p50_low_rate_ms": low, "speedup_vs_full": vs})
        print(f"| {mode} | {thr:.2f}{'+' if top else ''} | {most:.2f} | {low:.1f} | {f'{vs:.2f}x' if vs else '-'} |")
    if any(x["slo_met_at_top_rate"] for x in summary):
        print("(+: the SLO held at the highest rate offered, so the throughput at the SLO is at least this)")
    chunks = sum(v for k, v in m.items() if k.startswith("ragkv_tenant_chunks"))
    clen = next((r["chunk_len"] for r in runs if "chunk_len" in r), 0)
    bpt = m.get("ragkv_store_disk_bytes", 0) / (chunks * clen) if chunks and clen else None
    if bpt:
        print(f"\nbytes per cached token (compressed KV on disk / cached tokens): {bpt:.1f}")
    stored = {k: v for k, v in m.items() if "bytes" in k or "chunks" in k or "tokens" in k or "craft" in k}
    if stored:
        print("\nragkvd /metrics after the runs (storage; Cache-Craft variants captured and used):")
        for k, v in sorted(stored.items()):
            print(f"  {k} {v:g}")
    qual = quality_rows(a.quality)
    for name, q in qual.items():
        print(f"\nquality vs full prefill, {name} ({q['cases']} prompts of {q['prompt_tokens']} tokens; "
              "top-1 over a 32-token greedy continuation):")
        print("\n| mode | ratio/alpha | recomputed | next-token KL | top-1 | matched /32 |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in q["rows"]:
            print(f"| {r['mode']} | {r['ratio']:g} | {r['recomputed']:.3f} | {r['kl']:.5f} | {r['top1']:.3f} | "
                  f"{r['matched']:.1f} |")
    cod = codec_rows(a.codec)
    if cod:
        L, T, H, D = cod["shape"]
        print(f"\nbytes per cached token per codec level ({L} layers x {H} KV heads x {D} dims, "
              f"{T}-token synthetic chunk; fp16 is {2 * 2 * L * H * D} bytes):")
        print("\n| codec | bits/value | bytes/token | x smaller than q8 | rel. L2 |")
        print("|---|---:|---:|---:|---:|")
        for r in cod["rows"]:
            print(f"| {r['label']} | {r['bits_per_value']:.2f} | {r['bytes_per_token']:.0f} | "
                  f"{r['ratio_q8'] or 0:.2f} | {r['rel_l2'] or 0:.3f} |")
    with open(a.json, "w") as f:
        json.dump({"runs": runs, "summary": summary, "slo_ms": a.slo_ms, "bytes_per_cached_token": bpt, "hf": hf,
                   "metrics": m, "quality": qual, "codec": cod}, f, indent=1)
    if a.png_prefix:
        with open(a.json) as f:
            draw(json.load(f), a.png_prefix)


if __name__ == "__main__":
    main()
