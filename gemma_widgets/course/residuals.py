"""What float16 must hold: the residual stream's peaks, layer by layer (notebook 03)."""

from __future__ import annotations

from typing import Any

import torch


def residual_peaks(model: Any, input_ids: Any) -> list[float]:
    """The largest ``|value|`` in the residual stream after each decoder layer, for ``input_ids``.

    These are the numbers float16 must hold: compare them with :data:`gemma_widgets.engines.hf.FP16_MAX`.
    """
    peaks: list[float] = []

    def record(module: Any, inputs: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        peaks.append(float(hidden.detach().abs().max()))

    hooks = [layer.register_forward_hook(record) for layer in model.model.layers]
    try:
        with torch.inference_mode():
            model(input_ids=input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return peaks
