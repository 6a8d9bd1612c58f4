"""Throughput under concurrency: 16 clients in parallel on each endpoint of the app over raw HTTP, at COCO size.

    python benchmarks/throughput.py [--clients 16] [--seconds 20] [--count 123287] [--index auto]

Uses the cached synthetic 123,287-row artifacts of query_latency.py (ViT-B/32-size random CLIP). Each client is a
thread with its own httpx connection that sends queries back to back for a bounded time; text queries are all
distinct (the app's text-vector cache never answers them), images are uploaded with every query.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx
from common import (
    App,
    call,
    coco_like_jpegs,
    drive_clients,
    machine,
    percentile,
    synthetic_artifacts,
    text_queries,
    upload,
)

TARGETS = {"search_text": 100.0, "search_image": 20.0}  # queries/s with 16 clients, no errors (the issue)


def hammer(url: str, endpoint: str, make, clients: int, seconds: float) -> dict:
    run = drive_clients(url, clients, seconds, lambda client, n, i: call(client, endpoint, make(client, n, i)))
    latencies = run["latencies"].get("all", [])
    return {"qps": len(latencies) / run["elapsed"], "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": percentile(latencies, 0.95), "done": len(latencies), "errors": run["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per endpoint")
    parser.add_argument("--count", type=int, default=123_287)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    header = machine()
    folder = synthetic_artifacts(args.cache, args.count, args.index)
    jpegs = sorted(coco_like_jpegs(args.cache / "jpegs", 8).glob("*.jpg"))[:8]
    texts = text_queries(args.clients * 4000, seed=2)
    per_client = len(texts) // args.clients
    makers = {
        "search_text": lambda client, n, i: [texts[n * per_client + i % per_client], 5],
        "search_image": lambda client, n, i: [upload(client, jpegs[(n + i) % len(jpegs)]), 5],
        "search_similar": lambda client, n, i: [9 + 3 * ((n * 7919 + i * 104729) % args.count), 5],
    }
    results = {}
    with App(folder, args.cache) as app:
        precision = app.log_line(r"precision \w+(-\w+)?")
        with httpx.Client(base_url=app.url, timeout=120) as client:  # warm-up
            for name, make in makers.items():
                for i in range(3):
                    call(client, name, make(client, 0, 10_000 + i))
        for name, make in makers.items():
            results[name] = hammer(app.url, name, make, args.clients, args.seconds)
        rss = app.rss_mb()
    print(f"\nThroughput, {args.clients} concurrent clients x {args.seconds:.0f} s per endpoint, raw HTTP, "
          f"{args.count:,} images, ViT-B/32 size, encoder {precision or '?'}, CPU ({header})\n")
    print(f"resident memory of the app after the run: {rss:.0f} MB"
          + "\n")
    print("| endpoint | queries/s | p50 ms | p95 ms | done | errors | target |\n|---|---:|---:|---:|---:|---:|---|")
    for name, result in results.items():
        target = TARGETS.get(name)
        ok = target and result["qps"] >= target and not result["errors"]
        verdict = f"≥ {target:.0f} q/s, no errors: {'met' if ok else 'NOT met'}" if target else "-"
        print(f"| /{name} | {result['qps']:.1f} | {result['p50']:.0f} | {result['p95']:.0f} | {result['done']} | "
              f"{len(result['errors'])} | {verdict} |")
    for name, result in results.items():
        for error in sorted(set(result["errors"]))[:3]:
            print(f"  {name} error: {error}")


if __name__ == "__main__":
    main()
