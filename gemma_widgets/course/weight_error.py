"""Round-to-nearest quantization of one weight matrix, to measure what a scheme costs in accuracy.

Notebook 04 quantizes one real matrix of the model with each scheme it loads (int8 per row as
bitsandbytes' int8, NF4 in blocks of 64 as bitsandbytes' nf4, int4 with groups as OpenVINO's nncf) and
plots the relative error against the bits each weight really takes, scales and zero points included.

>>> import torch
>>> w = torch.randn(64, 256)
>>> int4 = roundtrip(w, bits=4, group_size=64, sym=False)
>>> int8 = roundtrip(w, bits=8, group_size=-1, sym=True)
>>> int8.error < int4.error and int8.bits_per_weight > int4.bits_per_weight
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: bitsandbytes' NormalFloat4 levels: quantiles of a normal distribution, scaled to [-1, 1].
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044006, 0.5626170039176941,
              0.7229568362236023, 1.0)


@dataclass(frozen=True)
class Roundtrip:
    """A scheme's relative error on a matrix (``||q - w|| / ||w||``) and its storage cost."""

    error: float
    bits_per_weight: float


def _groups(w: Any, group_size: int) -> Any:
    size = group_size if group_size > 0 else w.shape[-1]
    if w.numel() % size:
        raise ValueError(f"{w.numel()} weights do not split into groups of {size}")
    return w.reshape(-1, size).float()


def _error(q: Any, groups: Any) -> float:
    return float((q - groups).norm() / groups.norm())


def roundtrip(w: Any, bits: int = 4, group_size: int = 64, sym: bool = False, scale_bits: int = 16) -> Roundtrip:
    """Quantize ``w`` to ``bits`` on a uniform grid, one scale per group of ``group_size`` weights
    (``-1``: one per row), symmetric around zero or (``sym=False``) spanning each group's min..max with
    a zero point; dequantize and compare. A scale takes ``scale_bits``; a zero point ``bits``."""
    groups = _groups(w, group_size)
    top = 2 ** (bits - 1) - 1
    if sym:
        scale = (groups.abs().amax(1, keepdim=True) / top).clamp(min=1e-12)
        q = (groups / scale).round().clamp(-top - 1, top) * scale
        overhead = scale_bits
    else:
        low, high = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
        scale = ((high - low) / (2**bits - 1)).clamp(min=1e-12)
        q = ((groups - low) / scale).round().clamp(0, 2**bits - 1) * scale + low
        overhead = scale_bits + bits
    return Roundtrip(_error(q, groups), bits + overhead / groups.shape[1])


def nf4_roundtrip(w: Any, block_size: int = 64, double_quant: bool = False) -> Roundtrip:
    """bitsandbytes' NF4: each block of ``block_size`` weights scaled by its absolute maximum (a float32),
    then each weight rounded to the nearest of :data:`NF4_LEVELS`. ``double_quant`` stores the scales in
    8 bits with one float32 per 256 of them, as ``bnb_4bit_use_double_quant=True`` does (the error counted
    here is the weights' rounding only)."""
    groups = _groups(w, block_size)
    absmax = groups.abs().amax(1, keepdim=True).clamp(min=1e-12)
    levels = torch.tensor(NF4_LEVELS)
    nearest = ((groups / absmax).unsqueeze(-1) - levels).abs().argmin(-1)
    q = levels[nearest] * absmax
    overhead = 8 + 32 / 256 if double_quant else 32
    return Roundtrip(_error(q, groups), 4 + overhead / block_size)
