"""Benchmarks: each module answers one question a user asks and writes its table to benchmarks/results/NAME.md.

Run them from the repository root as `python -m benchmarks.NAME [flags]` (`--help` says what each flag does):
search_latency, startup, build_speed, scale_curve, frontier.
"""
