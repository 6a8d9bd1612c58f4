"""App start-up, memory and per-endpoint latency over the raw Gradio HTTP API (upload included for images).

    python benchmarks/app_latency.py [--images 256] [--queries 40]

Builds (once, cached) an index of COCO-like JPEGs with a ViT-B/32-size CLIP (random weights: same compute),
starts `python app.py` on it, and times POST /gradio_api/call/<endpoint> + reading the result stream.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, call, coco_like_jpegs, machine, upload, vit_b32_clip


def build(cache: Path, count: int) -> Path:
    out = cache / f"index-{count}"
    if not (out / "manifest.json").exists():
        model = vit_b32_clip(cache / "clip-b32")
        folder = coco_like_jpegs(cache / "jpegs", count)
        subprocess.run([sys.executable, "-m", "builder.build", "--images", str(folder), "--model", str(model),
                        "--out", str(out), "--limit", str(count), "--quiet", "--eval", "none"], cwd=ROOT, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    index = build(args.cache, args.images)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "INDEX_DIR": str(index), "GRADIO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1",
           "CLIPSEARCH_CACHE": str(args.cache / "app-cache")}
    log = args.cache / "app.log"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT)
    try:
        while "Running on local URL" not in log.read_text():
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        wall = time.perf_counter() - started
        ready = re.search(r"started in ([\d.]+) s, resident memory (\d+) MB", log.read_text())
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        texts = ["a photo of a dog", "a red bus", "people on a beach", "a plate of food"]
        jpegs = sorted((args.cache / "jpegs").glob("*.jpg"))[:8]
        results = {}
        for name, make in (("search_text", lambda i: [texts[i % 4] + f" {i}", 5]),
                           ("search_image", lambda i: [upload(client, jpegs[i % 8]), 5]),
                           ("search_similar", lambda i: [i % args.images + 1, 5])):
            call(client, name, make(0))  # warm-up
            times = []
            for i in range(args.queries):
                t0 = time.perf_counter()
                call(client, name, make(i))
                times.append((time.perf_counter() - t0) * 1000)
            results[name] = times
        rss = int(open(f"/proc/{process.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
    finally:
        process.terminate()
        process.wait(10)
    print(f"\nApp over raw HTTP, {args.images}-image index, ViT-B/32 size, CPU ({machine()})\n")
    print(f"start-up: {ready.group(1)} s to ready ({wall:.1f} s wall incl. imports); "
          f"memory at ready {ready.group(2)} MB, after the run {rss:.0f} MB\n")
    print("| endpoint | p50 ms | p90 ms | n |\n|---|---:|---:|---:|")
    for name, times in results.items():
        times.sort()
        print(f"| /{name} | {statistics.median(times):.1f} | {times[int(0.9 * len(times))]:.1f} | {len(times)} |")


if __name__ == "__main__":
    main()
