"""The runtimes that run a model, one class each behind :class:`~gemma_widgets.engines.base.Engine`.

=================================  ===========================================================
:class:`.hf.TransformersEngine`    a transformers model (any dtype, bitsandbytes, compiled)
:class:`.hf.OptimumEngine`         an OpenVINO IR through optimum-intel (the transformers API)
:class:`.genai.GenAIEngine`        an OpenVINO IR through openvino-genai's ``LLMPipeline``
:class:`.llamacpp.LlamaCppEngine`  a GGUF file through llama.cpp (llama-cpp-python)
:class:`.server.ServerEngine`      any OpenAI-compatible server (vLLM, TGI, LocalAI, llama.cpp)
=================================  ===========================================================

Engine modules import their runtime when loaded; import them where a model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemma_widgets.engines.base import CapabilityError, Delta, Engine, LocalEngine, Prompt

if TYPE_CHECKING:
    from gemma_widgets.engines.genai import GenAIEngine
    from gemma_widgets.engines.hf import OptimumEngine

__all__ = ["CapabilityError", "Delta", "Engine", "LocalEngine", "Prompt", "ir_engine"]


#: The ``engine=`` option of the ``ov-*`` precisions, short names and full ones; the first is the default.
IR_ENGINES = {"genai": "openvino-genai", "optimum": "optimum-intel"}


def ir_engine(option: str | None) -> type[GenAIEngine] | type[OptimumEngine]:
    """The engine class that runs an OpenVINO IR for ``engine=option``: ``genai`` (default) or ``optimum``."""
    from gemma_widgets.engines.genai import GenAIEngine
    from gemma_widgets.engines.hf import OptimumEngine
    from gemma_widgets.errors import UnknownPrecisionError

    classes = {cls.name: cls for cls in (GenAIEngine, OptimumEngine)}
    key = "genai" if option is None else str(option).strip().lower()
    name = IR_ENGINES.get(key, key)
    if name not in classes:
        raise UnknownPrecisionError(
            f"Unknown OpenVINO engine {option!r}: use 'genai' (openvino-genai LLMPipeline, fast) "
            "or 'optimum' (optimum-intel OVModelForCausalLM, the transformers API).")
    return classes[name]
