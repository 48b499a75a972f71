"""openvino-genai: an ``LLMPipeline`` whose whole generate loop runs in C++.

Token ids go in as ``TokenizedInputs`` (so every engine sees the same prompt); a ``StreamerBase``
receives each new token and its return value stops the pipeline. The pipeline keeps the last
call's KV cache and prefills only what a new prompt adds to it, so a chat's later turns start as
fast as its first (``benchmarks/chat_bench.py`` measures it) with the same reply. The pipeline gives no logits:
:meth:`GenAIEngine.score` reads them from optimum-intel's model on the same IR folder (the same
weights) when optimum-intel is installed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from huggingface_hub import snapshot_download
from transformers import AutoConfig

from gemma_widgets.engines.base import CapabilityError, LocalEngine, threaded
from gemma_widgets.engines.hf import OptimumEngine, chunked_logits, ir_recipe, ir_weights_bytes
from gemma_widgets.engines.openvino import (
    ExportSettings,
    cpu_properties,
    export,
    optimum_reason,
    quiet_optimum,
    with_ov_tokenizers,
)
from gemma_widgets.engines.spec import Backend, Format, Options, Precision, Preset, Source, served_elsewhere, too_big
from gemma_widgets.errors import PrecisionUnavailableError, UnknownPrecisionError
from gemma_widgets.host.hardware import Hardware
from gemma_widgets.host.packages import missing
from gemma_widgets.templates import end_of_turn_ids
from gemma_widgets.tokenizer import load_tokenizer


class GenAIEngine(LocalEngine):
    """An ``openvino_genai.LLMPipeline`` on an exported IR folder."""

    name = "openvino-genai"
    why_no_scores = "an LLMPipeline returns tokens only, and optimum-intel (which reads logits from the IR) is missing"

    def __init__(self, pipe: Any, tokenizer: Any, path: str, context_window: int):
        self.model = pipe
        self.tokenizer = tokenizer
        self.path = path
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.context_window = context_window

    @classmethod
    def from_ir(cls, folder: str) -> GenAIEngine:
        """A pipeline on the IR in ``folder``, with the Hugging Face tokenizer saved beside it."""
        window = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", 0) or 8192
        return cls(genai_pipeline(folder), load_tokenizer(folder), folder, int(window))

    @property
    def can_score(self) -> bool:  # type: ignore[override]
        return optimum_reason() is None

    def _inputs(self, ids: Sequence[int]) -> Any:
        import openvino as ov  # optional: the OpenVINO packages
        import openvino_genai as genai  # optional: the OpenVINO packages

        array = np.array([list(ids)], dtype=np.int64)
        return genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))

    def token_stream(self, ids: Sequence[int], settings: Any, stop: threading.Event) -> Iterator[list[int]]:
        import openvino_genai as genai  # optional: the OpenVINO packages

        config = self.model.get_generation_config()
        config.max_new_tokens = int(settings.max_new_tokens)
        config.repetition_penalty = float(settings.repetition_penalty)
        config.do_sample = not settings.greedy
        if not settings.greedy:
            config.temperature, config.top_p = float(settings.temperature), float(settings.top_p)
            config.top_k = int(settings.top_k)
        config.stop_token_ids = set(self.stop_ids)
        inputs = self._inputs(ids)

        def run(put: Callable[[list[int]], None]) -> None:
            class Forward(genai.StreamerBase):
                def write(self, token: int | list[int]) -> genai.StreamingStatus:
                    put([token] if isinstance(token, int) else list(token))
                    return genai.StreamingStatus.STOP if stop.is_set() else genai.StreamingStatus.RUNNING

                def end(self) -> None:
                    pass

            self.model.generate(inputs, config, Forward())

        return threaded(run)

    def generate_exact(self, ids: Sequence[int], n: int) -> list[int]:
        import openvino_genai as genai  # optional: the OpenVINO packages

        config = genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = n
        config.ignore_eos = True
        config.do_sample = False
        return list(self.model.generate(self._inputs(ids), config).tokens[0])

    def score(self, ids: Sequence[int], keep_generator: bool = True) -> Iterator[Any]:
        if not self.can_score:
            raise CapabilityError(f"{self.name} cannot score text: {self.why_no_scores}.")
        if not keep_generator:  # free the pipeline's copy of the weights before reading them again
            self.model = None
        from optimum.intel import OVModelForCausalLM  # optional: the exporter's package

        with quiet_optimum():
            model = OVModelForCausalLM.from_pretrained(self.path)
        return chunked_logits(model, ids)

    def weights_bytes(self) -> int:
        return ir_weights_bytes(self.path)

    def recipe(self) -> str:
        return ir_recipe(self.path)


def genai_pipeline(folder: str, device: str = "CPU") -> Any:
    """openvino-genai's ``LLMPipeline`` on the IR in ``folder`` (OpenVINO tokenizers added if missing)."""
    import openvino_genai  # optional: the OpenVINO packages

    properties = cpu_properties(folder) if device.upper() == "CPU" else {}
    return openvino_genai.LLMPipeline(str(with_ov_tokenizers(folder)), device, **properties)


#: The ``engine=`` option of the OpenVINO precisions (short names; the engines' full names work too).
IR_ENGINES: dict[str, type[GenAIEngine] | type[OptimumEngine]] = {"genai": GenAIEngine, "optimum": OptimumEngine}


def ir_engine(option: str | None) -> type[GenAIEngine] | type[OptimumEngine]:
    """The engine class that runs an OpenVINO IR for ``engine=option``: ``genai`` (default) or ``optimum``."""
    key = "genai" if option is None else str(option).strip().lower()
    classes = {**IR_ENGINES, **{cls.name: cls for cls in IR_ENGINES.values()}}
    if key not in classes:
        raise UnknownPrecisionError(
            f"Unknown OpenVINO engine {option!r}: use 'genai' (openvino-genai LLMPipeline, fast) "
            "or 'optimum' (optimum-intel OVModelForCausalLM, the transformers API).")
    return classes[key]


@dataclass(frozen=True)
class OpenVINOOptions(Options):
    """The engine that runs the IR, and the export's settings (:class:`ExportSettings`; None: its default)."""

    engine: str | None = None
    sym: bool | None = None
    group_size: int | None = None
    ratio: float | None = None
    all_layers: bool | None = None
    awq: bool | None = None

    def __post_init__(self) -> None:
        ir_engine(self.engine)
        self.export_settings("int4")  # refuses a setting of the wrong type or out of range now

    def settings(self) -> dict[str, Any]:
        """The export settings given (not None)."""
        return {name: value for name, value in asdict(self).items() if name != "engine" and value is not None}

    def export_settings(self, weight_format: str) -> ExportSettings:
        return ExportSettings(weight_format=weight_format, **self.settings())


class OpenVINOBackend(Backend):
    """An OpenVINO IR, exported here (nncf weight compression) or as downloaded, on openvino-genai or optimum-intel."""

    options = OpenVINOOptions

    def unavailable_reason(self, precision: Precision, preset: Preset, hardware: Hardware) -> str | None:
        """An IR runs on openvino-genai alone; exporting one, or the ``optimum`` engine, needs optimum-intel."""
        if preset.fmt == Format.SERVER:
            return served_elsewhere(preset)
        if preset.fmt == Format.OPENVINO and not precision.runs_exports:
            return f"{preset.name} is already an OpenVINO export; load it with ov-int4"
        needs_optimum = precision.defaults.get("engine") == "optimum" or preset.fmt != Format.OPENVINO
        return (missing("openvino", "openvino_genai", "openvino_tokenizers")
                or (optimum_reason() if needs_optimum else None)
                or too_big(preset, precision.bytes_per_param, hardware))

    def load(self, precision: Precision, preset: Preset, path: str, options: OpenVINOOptions,
             hardware: Hardware) -> tuple[GenAIEngine | OptimumEngine, list[str]]:
        engine = ir_engine(options.engine)
        if preset.fmt == Format.OPENVINO:
            if options.settings():
                raise PrecisionUnavailableError(f"{preset.name} is already exported; export settings "
                                                f"{sorted(options.settings())} do not apply.")
            folder = path if preset.source == Source.LOCAL else snapshot_download(path)
            return engine.from_ir(folder), ["loaded as exported"]
        settings = options.export_settings(str(precision.weight_format))
        return engine.from_ir(str(export(path, settings))), [f"OpenVINO export {settings.key}"]
