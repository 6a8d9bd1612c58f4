"""Lone-visitor latency over raw HTTP for two or more checkouts of the app, served at once, queries alternating.

    python benchmarks/lone_query.py --also before=/path/to/other/checkout [--queries 60] [--count 123287]
    python benchmarks/lone_query.py --label auto --also int8=. --env int8:CLIPSEARCH_PRECISION=int8

Each app (this checkout, labelled --label, plus every --also LABEL=DIR holding an app.py and clipsearch/) serves the
same 123,287-row synthetic artifacts with the ViT-B/32-size random CLIP. One query at a time, never two at once: a
distinct text (no cache hit) or an upload, each endpoint's queries alternating between the apps, so a busy machine
slows all alike. What the Space's CPU spends per visitor, without a browser competing for the same cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common
import httpx
from common import App, call, coco_like_jpegs, machine, percentile, synthetic_artifacts, text_queries, upload

PRECISION = r"precision \w+(-\w+)?"  # what the app logs when its encoder has chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR", help="another app checkout")
    parser.add_argument("--env", action="append", default=[], metavar="LABEL:KEY=VALUE",
                        help="an environment variable for one app's process")
    parser.add_argument("--queries", type=int, default=60, help="timed queries per endpoint and app")
    parser.add_argument("--count", type=int, default=common.COCO_COUNT)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = parser.parse_args()
    subjects = [(args.label, common.ROOT)] + [(label, Path(root)) for label, root in
                                              (item.split("=", 1) for item in args.also)]
    env: dict[str, dict[str, str]] = {}
    for item in args.env:
        label, _, setting = item.partition(":")
        key, _, value = setting.partition("=")
        env.setdefault(label, {})[key] = value
    header = machine()
    folder = synthetic_artifacts(args.cache, args.count)
    jpegs = sorted(coco_like_jpegs(args.cache / "jpegs", 16).glob("*.jpg"))[:16]
    texts = text_queries(len(subjects) * (args.queries + 3), seed=5)
    apps, clients = [], []
    try:
        for label, root in subjects:
            apps.append(App(folder, args.cache, env=env.get(label), root=root).__enter__())
            clients.append(httpx.Client(base_url=apps[-1].url, timeout=120))
        timings = {label: {"text": [], "image": []} for label, _ in subjects}
        for i in range(args.queries + 3):  # the first 3 rounds warm up
            for number, (label, _) in enumerate(subjects):
                client = clients[number]
                text = texts[i * len(subjects) + number]
                picture = upload(client, jpegs[(i + number) % len(jpegs)])  # the upload is not timed
                for mode, endpoint, data in (("text", "search_text", [text, 5]),
                                             ("image", "search_image", [picture, 5])):
                    began = time.perf_counter()
                    call(client, endpoint, data)
                    if i >= 3:
                        timings[label][mode].append((time.perf_counter() - began) * 1000)
    finally:
        for client in clients:
            client.close()
        for app in apps:
            app.__exit__(None, None, None)
    print(f"\nLone queries over raw HTTP, {args.count:,} images, ViT-B/32 size, apps served at once, queries "
          f"alternating ({header})\n")
    for (label, _), app in zip(subjects, apps):
        print(f"{label}: {app.log_line(PRECISION) or 'precision ?'}; ready {app.wall_seconds:.1f} s after process "
              f"start ({app.ready_seconds:.1f} s of it start-up work after imports)")
    print("\n| app | text p50 ms | text p90 ms | image p50 ms (upload not counted) | image p90 ms | n |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _ in subjects:
        text, image = timings[label]["text"], timings[label]["image"]
        print(f"| {label} | {statistics.median(text):.1f} | {percentile(text, 0.9):.1f} | "
              f"{statistics.median(image):.1f} | {percentile(image, 0.9):.1f} | {len(text)} |")


if __name__ == "__main__":
    main()
