"""App start-up at COCO size with a warm cache: seconds to ready and resident memory, and where the memory goes.

    python benchmarks/startup.py [--count 123287] [--runs 2] [--index auto]

Uses the cached synthetic 123,287-row artifacts of query_latency.py (ViT-B/32-size random CLIP). Starts
`python app.py` --runs times (the first warms the OS page cache and the app's sha256 stamps; the last is reported),
then replays the start-up in a child process stage by stage, printing resident memory after each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, App, machine, synthetic_artifacts

TARGET_SECONDS, TARGET_MB = 10.0, 1200.0  # the issue: ready in <= 10 s, resident memory <= 1.2 GB

STAGES = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
def rss():
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024
stages, t0 = [], time.perf_counter()
def mark(name):
    stages.append((name, round(time.perf_counter() - t0, 2), round(rss())))
mark("python")
import torch; mark("import torch")
import gradio; mark("import gradio")
import faiss, pyarrow.parquet as pq; from clipsearch.serve.service import Settings; mark("import clipsearch, faiss")
from clipsearch.serve.hub import open_gallery
gallery, _ = open_gallery(index_dir=os.environ["INDEX_DIR"], repo_id="unused/unused", revision=None)
mark(f"gallery: index {type(gallery.index).__name__} + metadata + thumbnail maps")
from clipsearch.core.encoder import Encoder
model = gallery.manifest.model
try:
    encoder = Encoder.load(model["model_id"], model.get("revision"), device="cpu", precision="auto")
except TypeError:  # an encoder without the fast path
    encoder = Encoder.load(model["model_id"], model.get("revision"), device="cpu")
mark(f"encoder ({getattr(encoder, 'precision', 'fp32')})")
print("STAGES " + json.dumps(stages))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=123_287)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    header = machine()
    folder = synthetic_artifacts(args.cache, args.count, args.index)
    runs = []
    for _ in range(args.runs):
        with App(folder, args.cache) as app:
            runs.append((app.wall_seconds, app.ready_seconds, app.ready_rss_mb, app.rss_mb(),
                         app.log_line(r"precision \w+(-\w+)?")))
    env = {**os.environ, "INDEX_DIR": str(folder), "CLIPSEARCH_CACHE": str(args.cache / "app-cache")}
    child = subprocess.run([sys.executable, "-c", STAGES], cwd=ROOT, env=env, capture_output=True, text=True)
    stages = json.loads(child.stdout.split("STAGES ", 1)[1]) if "STAGES " in child.stdout else []
    wall, ready, ready_rss, rss, precision = runs[-1]
    print(f"\nApp start-up with a warm cache, {args.count:,} images, ViT-B/32 size, CPU ({header})\n")
    print("| run | process start → serving (s) | app's own start-up (s) | RSS at ready (MB) | RSS serving (MB) |")
    print("|---|---:|---:|---:|---:|")
    for number, (w, r, m, s, _) in enumerate(runs, start=1):
        print(f"| {number}{' (reported)' if number == len(runs) else ''} | {w:.1f} | {r:.1f} | {m:.0f} | {s:.0f} |")
    print(f"\nTargets: ready ≤ {TARGET_SECONDS:.0f} s: {'met' if wall <= TARGET_SECONDS else 'NOT met'} "
          f"({wall:.1f} s from process start, {ready:.1f} s after imports); resident memory ≤ {TARGET_MB:.0f} MB: "
          f"{'met' if max(ready_rss, rss) <= TARGET_MB else 'NOT met'} ({ready_rss:.0f} MB at ready, {rss:.0f} MB "
          f"serving); encoder {precision or '?'}"
          + "\n")
    if stages:
        print("Where start-up time and memory go (the same steps replayed in a child process):\n")
        print("| stage | cumulative s | RSS MB | + MB |\n|---|---:|---:|---:|")
        previous = 0
        for name, seconds, mb in stages:
            print(f"| {name} | {seconds:.2f} | {mb} | {mb - previous:+d} |")
            previous = mb
    else:
        print(f"(stage breakdown failed: {child.stderr[-500:]})")


if __name__ == "__main__":
    main()
