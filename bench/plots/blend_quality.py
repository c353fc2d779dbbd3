#!/usr/bin/env python3
"""blend_quality.py — plot quality against recompute fraction per blending mode (gnuplot, PNG).

Reads `ragkv blend eval --json` results (one file per model; docs/results/blend-*.json) and
draws, per file, two panels: next-token KL against full prefill (log scale) and top-1
agreement over the greedy continuation, both against the fraction of prompt tokens
recomputed, one series per mode (CacheBlend's ratios and Cache-Craft's alphas form curves;
naive, prefix, APE are single points). Needs gnuplot (Debian: gnuplot-nox).

    python3 bench/plots/blend_quality.py docs/results/blend-craft-stories260K.json --out docs/blend-quality-stories260K.png

--also FILE:SUFFIX (repeatable) adds another run's rows with SUFFIX appended to their mode
names (the same prompts under other options, e.g. CacheBlend's ranking by attention):

    python3 bench/plots/blend_quality.py docs/results/blend-eval-select-stories260K-deviation-s1.json \
        --also docs/results/blend-eval-select-stories260K-attention-s1.json:-attention \
        --out docs/blend-select-stories260K.png
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    ap.add_argument("--also", action="append", default=[], metavar="FILE:SUFFIX")
    a = ap.parse_args()
    with open(a.json) as f:
        d = json.load(f)
    for extra in a.also:
        path, sep, suffix = extra.rpartition(":")
        if not sep or not path:
            sys.exit(f"--also {extra}: expected FILE:SUFFIX")
        with open(path) as f:
            e = json.load(f)
        for r in e["runs"]:
            if r["mode"] in ("naive", "prefix", "full"):  # the same points as the first file's
                continue
            d["runs"].append(dict(r, mode=r["mode"] + suffix))
    modes = []
    for r in d["runs"]:
        if r["mode"] not in modes:
            modes.append(r["mode"])
    tmp = tempfile.mkdtemp()
    plots_kl, plots_top = [], []
    for i, m in enumerate(modes):
        rows = sorted((r for r in d["runs"] if r["mode"] == m), key=lambda r: r["recomputed"])
        path = os.path.join(tmp, f"{i}.dat")
        with open(path, "w") as f:
            for r in rows:
                kl = max(r["kl"], 1e-6)  # full-quality points on the log axis
                f.write(f"{r['recomputed']:.5f} {kl:.7g} {r['top1']:.5f}\n")
        style = "linespoints" if len(rows) > 1 else "points"
        plots_kl.append(f"'{path}' using 1:2 with {style} lw 2 pt {i + 5} ps 1.3 title '{m}'")
        plots_top.append(f"'{path}' using 1:3 with {style} lw 2 pt {i + 5} ps 1.3 title '{m}'")
    title = a.title or f"{d['model'].split('-')[0]}: {d['cases']} prompts of {d['chunks']} chunks x {d['chunk_len']} tokens"
    script = f"""
set terminal pngcairo size 1200,480 font 'sans,10'
set output '{a.out}'
set multiplot layout 1,2 title '{title}'
set grid
set key top right
set xlabel 'fraction of prompt tokens recomputed'
set xrange [0:1.05]
set ylabel 'next-token KL vs full prefill (1e-6 = exact)'
set logscale y
plot {', '.join(plots_kl)}
unset logscale y
set ylabel 'top-1 agreement with full (greedy continuation)'
set yrange [0:1.05]
set key bottom right
plot {', '.join(plots_top)}
unset multiplot
"""
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        sys.exit(1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
