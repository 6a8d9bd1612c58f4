"""Bounded load test: many concurrent clients mixing text and image queries against `python app.py` on loopback.

    python benchmarks/load_test.py [--clients 32] [--seconds 60] [--image-share 0.25] [--images 256]

Builds (once, cached) the app_latency index of COCO-like JPEGs with a ViT-B/32-size CLIP (random weights: same
compute), starts the app on it, warms it up under the same load until its memory is at steady state (Gradio's session
store full: about 500 queries), then runs the clients for a fixed time. Each client
is a thread with its own HTTP connection sending queries back to back (every text distinct; images uploaded with
each query). Reports throughput, p50/p95/p99 latency, errors (must be 0; a full queue's "busy" answer counts as one)
and the app's resident memory before and after (growth must stay under 10%). Exits 1 when either check fails.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx
from app_latency import build
from common import App, call, drive_clients, machine, percentile, text_queries, upload

K = 5


class Busy(RuntimeError):
    """The app turned the request away (its queue was full)."""


def _refusals(response: httpx.Response) -> None:
    """Event hook: a refused request is counted with the app's own sentence (common.call only knows success)."""
    if response.status_code >= 400 and not response.request.url.path.endswith("/upload"):
        response.read()
        detail = response.text[:200]
        raise (Busy if response.status_code == 503 else RuntimeError)(f"HTTP {response.status_code}: {detail}")


def run_clients(url: str, clients: int, seconds: float, image_share: float, texts: list[str], jpegs: list[Path],
                offset: int = 0) -> dict:
    """`clients` threads for `seconds`; query i of client n is an image query when it falls in the image share."""
    per_client = len(texts) // clients
    every = round(1 / image_share) if image_share > 0 else 0

    def kind(number: int, sent: int) -> str:
        return "image" if every and (sent + number) % every == 0 else "text"

    def query(client: httpx.Client, number: int, sent: int) -> None:
        if kind(number, sent) == "image":
            result = call(client, "search_image", [upload(client, jpegs[(number + sent) % len(jpegs)]), K])
        else:
            result = call(client, "search_text", [texts[number * per_client + (offset + sent) % per_client], K])
        if len(result[1]) != K:
            raise RuntimeError(f"{len(result[1])} hits instead of {K}")

    run = drive_clients(url, clients, seconds, query, kind, timeout=300, event_hooks={"response": [_refusals]})
    run["latencies"] = {"text": [], "image": [], **run["latencies"]}
    return run


def row(name: str, values: list[float], elapsed: float) -> str:
    if not values:
        return f"| {name} | 0 | - | - | - | - |"
    return (f"| {name} | {len(values)} | {len(values) / elapsed:.1f} | {statistics.median(values):.0f} | "
            f"{percentile(values, 0.95):.0f} | {percentile(values, 0.99):.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured run")
    parser.add_argument("--warmup", type=float, default=40.0,
                        help="same load before measuring: long enough for the app to reach its steady memory "
                        "(Gradio keeps its newest 500 sessions and each raw-HTTP call is one)")
    parser.add_argument("--image-share", type=float, default=0.25, help="fraction of queries that are images")
    parser.add_argument("--images", type=int, default=256, help="gallery size of the served index")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    header = machine()
    index = build(args.cache, args.images)
    jpegs = sorted((args.cache / "jpegs").glob("*.jpg"))[:16]
    texts = text_queries(args.clients * 2000, seed=3)
    with App(index, args.cache, log=args.cache / "load-test-app.log") as app:
        ready_rss = app.rss_mb()
        warm = run_clients(app.url, args.clients, args.warmup, args.image_share, texts, jpegs, offset=1000)
        before = app.rss_mb()
        result = run_clients(app.url, args.clients, args.seconds, args.image_share, texts, jpegs)
        after = app.rss_mb()
        precision = app.log_line(r"precision \w+(-\w+)?")
    latencies, errors, elapsed = result["latencies"], result["errors"], result["elapsed"]
    growth = (after - before) / before * 100
    busy = [e for e in errors if "Busy" in e]
    print(f"\nLoad test: {args.clients} concurrent clients x {args.seconds:.0f} s (after {args.warmup:.0f} s of "
          f"warm-up), {args.image_share:.0%} image queries, k={K}, raw HTTP on loopback, {args.images}-image index, "
          f"ViT-B/32 size, encoder {precision or '?'}, CPU ({header})\n")
    print("| queries | done | per second | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|")
    print(row("text (/search_text)", latencies["text"], elapsed))
    print(row("image (upload + /search_image)", latencies["image"], elapsed))
    print(row("all", latencies["text"] + latencies["image"], elapsed))
    print(f"\nerrors: {len(errors)} ({len(busy)} 'busy' refusals); warm-up errors: {len(warm['errors'])}")
    for error in sorted(set(errors + warm["errors"]))[:5]:
        print(f"  {error}")
    print(f"app memory: {ready_rss:.0f} MB at ready, {before:.0f} MB after warm-up, {after:.0f} MB after the run "
          f"({growth:+.1f}%)")
    ok = not errors and growth < 10
    print(f"verdict: {'PASS' if ok else 'FAIL'} (errors must be 0, memory growth under 10%)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
