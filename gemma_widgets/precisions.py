"""The precision registry: every way the kit can load a model, and whether it can here.

Each :class:`Precision` has a name, the bytes it stores per parameter, a loader, and an
availability check that returns a reason instead of raising deep inside a load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gemma_widgets.errors import PrecisionUnavailableError
from gemma_widgets.models import LoadedModel, Preset


@dataclass(frozen=True)
class Precision:
    """One way to load a model: dtype or quantization, and the engine that runs it."""

    name: str
    description: str
    bytes_per_param: float
    load_fn: Callable[..., LoadedModel]
    check_fn: Callable[[Preset], str | None]

    def unavailable_reason(self, preset: Preset) -> str | None:
        """Why this precision cannot run ``preset`` here, or None if it can."""
        return self.check_fn(preset)

    def load(self, preset: Preset, path: str, **options: Any) -> LoadedModel:
        """Load ``preset`` from ``path`` (a local folder or hub id) in this precision."""
        reason = self.unavailable_reason(preset)
        if reason:
            raise PrecisionUnavailableError(f"{self.name} is not available here: {reason}")
        return self.load_fn(self, preset, path, **options)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _transformers_only(preset: Preset) -> str | None:
    if preset.fmt != "transformers":
        return f"{preset.name} is an OpenVINO export; use an ov-* precision"
    return None


def _load_torch_dtype(variant: Precision, preset: Preset, path: str, **options: Any) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    from gemma_widgets._bundled import load_tokenizer
    from gemma_widgets.templates import ensure_chat_template

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[variant.name]
    device_map = "auto" if _has_cuda() else None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **options)
    model.eval()
    tokenizer = load_tokenizer(path)
    ensure_chat_template(tokenizer)
    return LoadedModel(model, tokenizer, preset, variant.name, "transformers", path)


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "float32 weights and activations (reference)", 4, _load_torch_dtype,
                  _transformers_only),
        Precision("bf16", "bfloat16: fp32's range, half the bytes", 2, _load_torch_dtype,
                  _transformers_only),
        Precision("fp16", "float16: half the bytes, but Gemma's activations overflow its range", 2,
                  _load_torch_dtype, _transformers_only),
    )
}


def auto_precision(preset: Preset) -> str:
    """The best precision for ``preset`` on this hardware."""
    import torch

    if preset.fmt == "openvino":
        return "ov-int4"
    if _has_cuda() and torch.cuda.get_device_capability()[0] >= 8:
        return "bf16"  # Ampere or newer computes bf16 natively
    return "bf16"


def resolve(name: str | None, preset: Preset) -> Precision:
    """The :class:`Precision` called ``name`` (``None`` or ``auto``: :func:`auto_precision`)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = auto_precision(preset)
    if name not in PRECISIONS:
        raise PrecisionUnavailableError(
            f"Unknown precision {name!r}. Known: auto, {', '.join(PRECISIONS)}."
        )
    return PRECISIONS[name]
