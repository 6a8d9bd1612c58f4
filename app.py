"""The Space entry point: read settings, load the verified index and its model, serve the Gradio UI."""

import logging
import os
import sys

# The encoder's OpenMP threads sleep between parallel regions instead of spinning (before torch loads OpenMP): on
# 2 vCPU the spinning took the cores Gradio and other visitors' requests needed (docs/decisions/0043).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clipsearch.core.errors import ArtifactError, EncoderError
from clipsearch.serve import prefetch
from clipsearch.serve.settings import Settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main() -> None:
    try:
        settings = Settings.from_env()
    except EncoderError as error:
        sys.exit(f"error: {error}")
    prefetch.begin(settings)  # the downloads run while the next two imports load torch, transformers and Gradio
    from clipsearch.serve.service import start  # lazy: ~5 s of torch and transformers, overlapping the downloads
    from clipsearch.web.ui import build_ui, launch  # lazy: ~3 s of Gradio, likewise

    try:
        service = start(settings)
    except (ArtifactError, EncoderError) as error:
        logging.getLogger("app").error("cannot start: %s", error)
        sys.exit(f"error: {error}")
    launch(build_ui(service), service)


if __name__ == "__main__":
    main()
