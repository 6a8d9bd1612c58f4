"""The Space entry point: read settings, load the verified index and its model, serve the Gradio UI."""

import logging
import sys

from clipsearch.core.errors import ArtifactError, EncoderError
from clipsearch.serve.service import Settings, start
from clipsearch.web.ui import build_ui, launch

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main() -> None:
    try:
        service = start(Settings.from_env())
    except (ArtifactError, EncoderError) as error:
        logging.getLogger("app").error("cannot start: %s", error)
        sys.exit(f"error: {error}")
    launch(build_ui(service), service)


if __name__ == "__main__":
    main()
