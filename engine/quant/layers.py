"""The layer a QA-LoRA base runs on: a linear layer whose weight is held as group INT4 codes
and dequantized inside the forward (and again in the backward), so only the codes stay in
memory (a heavy module: torch)."""

from __future__ import annotations

import torch
from torch import nn

from loradeck.engine.quant import int4


class _Int4Matmul(torch.autograd.Function):
    """x @ Wᵀ with W = d·q + m made on the fly; the backward makes W again rather than keep it."""

    @staticmethod
    def forward(ctx, x, packed, scales, offsets, group_size):  # noqa: D102
        ctx.save_for_backward(packed, scales, offsets)
        ctx.group_size = group_size
        w = int4.dequantize(packed, scales, offsets, group_size, x.dtype)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        packed, scales, offsets = ctx.saved_tensors
        w = int4.dequantize(packed, scales, offsets, ctx.group_size, grad.dtype)
        return grad @ w, None, None, None, None


class Int4Linear(nn.Module):
    """y = x (d·q + m)ᵀ + b. ``qweight`` holds the packed codes; the fp16 scales and offsets
    are kept as int16 bit patterns, so casting the model's dtype never rounds them."""

    def __init__(self, codes: int4.Codes, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group_size = codes.group_size
        self.register_buffer("qweight", codes.packed.contiguous())
        self.register_buffer("scale_bits", codes.scales.to(torch.float16).view(torch.int16))
        self.register_buffer("offset_bits", codes.offsets.to(torch.float16).view(torch.int16))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) \
            if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        return cls(int4.quantize(linear.weight, group_size), linear.bias)

    @property
    def infeatures(self) -> int:  # how PEFT reads a quantized layer's size
        return self.in_features

    @property
    def outfeatures(self) -> int:
        return self.out_features

    @property
    def scales(self) -> torch.Tensor:
        return self.scale_bits.view(torch.float16)

    @property
    def offsets(self) -> torch.Tensor:
        return self.offset_bits.view(torch.float16)

    def codes(self) -> int4.Codes:
        return int4.Codes(self.qweight, self.scales, self.offsets, self.group_size)

    def set_offsets(self, offsets: torch.Tensor) -> None:
        self.offset_bits.copy_(offsets.to(torch.float16).view(torch.int16))

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return int4.dequantize(self.qweight, self.scales, self.offsets, self.group_size, dtype)

    def to_linear(self, dtype: torch.dtype) -> nn.Linear:
        """A plain nn.Linear holding d·q + m in ``dtype`` (the 16-bit form)."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.qweight.device, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(self.dequantized(torch.float32))
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Int4Matmul.apply(x, self.qweight, self.scales, self.offsets, self.group_size)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
