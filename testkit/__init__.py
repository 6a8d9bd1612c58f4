"""Support shared by tests and benchmarks: a loopback Hub, tiny models, synthetic galleries, app and browser drivers."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
HUB_TOKEN = "hf_test_write_token"  # the loopback Hub's write token
