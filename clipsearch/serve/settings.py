"""The app's settings from the environment (Space variables and secrets); light to import, so downloads can start
before torch and Gradio have loaded (see clipsearch.serve.prefetch)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.errors import EncoderError
from ..core.manifest import DEFAULT_INDEX_REPO, PRECISIONS


@dataclass(frozen=True)
class Settings:
    """Environment variables, so Space variables and secrets work unchanged (see README)."""

    index_dir: str | None
    index_repo: str
    index_revision: str | None
    endpoint: str | None
    token: str | None
    precision: str = "auto"
    # INDEX_REPO left unset: only then may a missing repo be replaced by a starter index (see clipsearch.serve.starter)
    default_repo: bool = False

    @property
    def serving_copy(self) -> bool:
        """Whether a build's int8 serving copy (core.serving) is what the app loads: for auto and int8; fp32 and
        bf16 need the model's own checkpoint."""
        return self.precision in ("auto", "int8")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        precision = env.get("CLIPSEARCH_PRECISION") or "auto"
        if precision not in PRECISIONS:
            raise EncoderError(f"CLIPSEARCH_PRECISION={precision!r}: choose one of {', '.join(PRECISIONS)} "
                               "(auto: the fastest path that agrees with fp32 on this CPU).")
        return cls(
            index_dir=env.get("INDEX_DIR") or None,
            index_repo=env.get("INDEX_REPO") or DEFAULT_INDEX_REPO,
            index_revision=env.get("INDEX_REVISION") or None,
            endpoint=env.get("HF_ENDPOINT") or None,
            token=env.get("HF_TOKEN") or None,
            precision=precision,
            default_repo=not env.get("INDEX_REPO"),
        )
