"""The runtimes that run a model, one class each behind :class:`~gemma_widgets.engines.base.Engine`,
each module with the :class:`~gemma_widgets.engines.spec.Backend` that loads it.

=================================  ===========================================================
:class:`.hf.TransformersEngine`    a transformers model (any dtype, bitsandbytes, compiled)
:class:`.hf.OptimumEngine`         an OpenVINO IR through optimum-intel (the transformers API)
:class:`.genai.GenAIEngine`        an OpenVINO IR through openvino-genai's ``LLMPipeline``
:class:`.llamacpp.LlamaCppEngine`  a GGUF file through llama.cpp (llama-cpp-python)
:class:`.server.ServerEngine`      any OpenAI-compatible server (vLLM, TGI, LocalAI, llama.cpp)
=================================  ===========================================================

Engine modules import their runtime when loaded; a precision names its backend lazily.
"""
