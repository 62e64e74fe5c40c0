"""Group INT4 codes of a weight matrix: x = d·q + m per group of input columns.

Asymmetric 4-bit codes q in 0..15 with one fp16 scale d and one fp16 offset m per group of
``group_size`` columns of a row. For a group of 32 this is exactly GGUF's Q4_1 block (d, m,
then 32 codes in 16 bytes), and the codes are packed as Q4_1 packs them: in each run of 32
columns, column j (j < 16) in the low nibble of byte j and column j + 16 in its high nibble.
Larger groups keep the same packing, so every row is a whole number of 32-column blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BLOCK = 32            # columns per packed block (GGUF Q4_1's QK4_1)
Q4_1_BYTES = 20       # d (fp16), m (fp16), 16 bytes of codes
GROUP_SIZES = (32, 64, 128)
LEVELS = 15           # the largest code


@dataclass
class Codes:
    """One weight's codes: ``packed`` uint8 [out, in/2], ``scales`` and ``offsets`` fp16
    [out, in/group_size]."""

    packed: Any
    scales: Any
    offsets: Any
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.packed.shape[0]), int(self.packed.shape[1]) * 2


def check_shape(in_features: int, group_size: int, where: str = "") -> None:
    """Raise ValueError unless the columns split into whole groups."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group size must be one of {GROUP_SIZES} (got {group_size})")
    if in_features % group_size:
        raise ValueError(f"{where or 'a weight'} has {in_features} input columns, not a "
                         f"multiple of the group size {group_size}")


def pack(q: Any) -> Any:
    """uint8 codes [out, in] (0..15) into bytes [out, in/2], Q4_1's nibble order."""
    out, cols = q.shape
    blocks = q.reshape(out, cols // BLOCK, 2, BLOCK // 2)
    return (blocks[:, :, 0, :] | (blocks[:, :, 1, :] << 4)).reshape(out, cols // 2)


def unpack(packed: Any) -> Any:
    """Bytes [out, in/2] back into uint8 codes [out, in]."""
    import torch

    out, half = packed.shape
    blocks = packed.reshape(out, half // (BLOCK // 2), BLOCK // 2)
    return torch.stack((blocks & 0x0F, blocks >> 4), dim=2).reshape(out, half * 2)


def quantize(weight: Any, group_size: int) -> Codes:
    """The codes of a 2-D weight: per group, d = (max − min)/15 and m = min (both rounded to
    fp16 first), q = round((x − m)/d) clamped to 0..15."""
    import torch

    w = weight.detach().to(torch.float32)
    out, cols = w.shape
    check_shape(cols, group_size)
    groups = w.reshape(out, cols // group_size, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((hi - lo) / LEVELS).to(torch.float16)
    offsets = lo.to(torch.float16)
    d = scales.to(torch.float32).unsqueeze(-1)
    m = offsets.to(torch.float32).unsqueeze(-1)
    q = torch.where(d > 0, torch.round((groups - m) / torch.where(d > 0, d, 1.0)),
                    torch.zeros_like(groups))
    q = q.clamp_(0, LEVELS).to(torch.uint8).reshape(out, cols)
    return Codes(pack(q), scales.contiguous(), offsets.contiguous(), group_size)


def dequantize(packed: Any, scales: Any, offsets: Any, group_size: int, dtype: Any) -> Any:
    """d·q + m, computed in fp32 as llama.cpp does, returned in ``dtype``."""
    import torch

    q = unpack(packed).to(torch.float32)
    out, cols = q.shape
    q = q.reshape(out, cols // group_size, group_size)
    w = q * scales.to(torch.float32).unsqueeze(-1) + offsets.to(torch.float32).unsqueeze(-1)
    return w.reshape(out, cols).to(dtype)


def q4_1_blocks(codes: Codes) -> Any:
    """The codes as GGUF Q4_1 blocks (numpy uint8 [out, in/32 · 20]); group size 32 only."""
    import numpy as np

    if codes.group_size != BLOCK:
        raise ValueError(f"Q4_1 blocks hold groups of {BLOCK} columns (got {codes.group_size})")
    out, cols = codes.shape
    n = cols // BLOCK
    d = codes.scales.cpu().numpy().astype(np.float16).view(np.uint8).reshape(out, n, 2)
    m = codes.offsets.cpu().numpy().astype(np.float16).view(np.uint8).reshape(out, n, 2)
    qs = codes.packed.cpu().numpy().reshape(out, n, BLOCK // 2)
    return np.concatenate([d, m, qs], axis=-1).reshape(out, n * Q4_1_BYTES)


def from_q4_1_blocks(blocks: Any, cols: int) -> Codes:
    """Q4_1 blocks (numpy uint8, one row of blocks per weight row) back into codes."""
    import numpy as np
    import torch

    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, cols // BLOCK, Q4_1_BYTES)
    out = raw.shape[0]
    d = raw[..., 0:2].copy().view(np.float16).reshape(out, -1)
    m = raw[..., 2:4].copy().view(np.float16).reshape(out, -1)
    qs = raw[..., 4:].reshape(out, cols // 2)
    return Codes(torch.from_numpy(qs.copy()), torch.from_numpy(d), torch.from_numpy(m), BLOCK)
