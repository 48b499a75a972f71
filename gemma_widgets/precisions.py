"""The precision registry: every way the kit can load a model, as typed rows, and whether it can here.

========================  =====================================================================
``fp32``                  float32, the reference
``bf16``                  bfloat16: float32's range in half the bytes
``fp16``                  float16: Gemma 2 2B/9B only (Gemma 3 and 27B overflow or are erratic)
``bnb-int8``              bitsandbytes LLM.int8() weights
``bnb-nf4``, ``bnb-fp4``  bitsandbytes 4-bit weights (``double_quant=True`` quantizes the scales)
``ov-fp16``, ``ov-int8``  OpenVINO IR exports (nncf weight compression), run by openvino-genai
``ov-int4``               ...4-bit: ``sym``, ``group_size``, ``ratio``, ``all_layers``, ``awq`` options
``ov-int4-optimum``       the same int4 IR run by optimum-intel's ``OVModelForCausalLM``
``gguf-q4_k_m``           llama.cpp on the bundled model's own GGUF file (``gemma_widgets[llamacpp]``)
``served``                an OpenAI-compatible server's model (``load_model("http://host:port/v1")``)
========================  =====================================================================

Each row (:class:`~gemma_widgets.engines.spec.Precision`) names its backend lazily, its dtype or
weight format, whether it exports first, and the options its backend takes (a typed
:class:`~gemma_widgets.engines.spec.Options`: anything else is refused). Adding a precision is
adding a row; adding an engine is one module with its backend, plus a row.

Every ``ov-*`` variant takes ``engine="genai"`` (``openvino_genai.LLMPipeline``, the default:
fast, for chat and benchmarks) or ``engine="optimum"`` (``OVModelForCausalLM``: the transformers
API with logits, what notebook 04 teaches). ``auto`` picks for the hardware, see
:func:`auto_precision`; ``fast`` is ``auto`` when speed matters more than the transformers API.
"""

from __future__ import annotations

from types import MappingProxyType

from gemma_widgets.engines.spec import Format, Precision, Preset
from gemma_widgets.errors import UnknownPrecisionError
from gemma_widgets.host.hardware import Hardware

_TORCH = "gemma_widgets.engines.hf:TorchBackend"
_BNB = "gemma_widgets.engines.hf:BnbBackend"
_OPENVINO = "gemma_widgets.engines.genai:OpenVINOBackend"
_LLAMACPP = "gemma_widgets.engines.llamacpp:LlamaCppBackend"
_SERVER = "gemma_widgets.engines.server:ServerBackend"
_OPTIMUM = MappingProxyType({"engine": "optimum"})  # optimum-intel's model both generates and gives logits

PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "float32 weights and activations (reference)", 4, _TORCH, dtype="float32"),
        Precision("bf16", "bfloat16: fp32's range, half the bytes", 2, _TORCH, dtype="bfloat16"),
        Precision("fp16", "float16: half the bytes; Gemma 2 2B/9B only (others overflow its range)", 2, _TORCH,
                  dtype="float16",
                  note="float16: documented for Gemma 2 9B, not for 2B; watch for inf/NaN logits (notebook 03)"),
        Precision("bnb-int8", "bitsandbytes LLM.int8(): int8 weights, outliers in 16-bit", 1, _BNB,
                  weight_format="int8"),
        Precision("bnb-nf4", "bitsandbytes 4-bit NormalFloat weights", 0.5, _BNB, weight_format="nf4"),
        Precision("bnb-fp4", "bitsandbytes 4-bit float weights", 0.5, _BNB, weight_format="fp4"),
        Precision("ov-fp16", "OpenVINO IR, fp16 weights (openvino-genai)", 2, _OPENVINO, weight_format="fp16",
                  needs_export=True, with_logits=_OPTIMUM),
        Precision("ov-int8", "OpenVINO IR, int8 weights (openvino-genai)", 1, _OPENVINO, weight_format="int8",
                  needs_export=True, with_logits=_OPTIMUM),
        Precision("ov-int4", "OpenVINO IR, int4 weights (openvino-genai)", 0.5, _OPENVINO, weight_format="int4",
                  needs_export=True, runs_exports=True, with_logits=_OPTIMUM),
        Precision("ov-int4-optimum", "OpenVINO IR, int4 weights (optimum-intel, transformers API)", 0.5, _OPENVINO,
                  weight_format="int4", needs_export=True, runs_exports=True, defaults=_OPTIMUM),
        Precision("gguf-q4_k_m", "llama.cpp on the bundled GGUF file (Q4_K_M: Q8_0 output layer, Q5_0/Q4_K body; "
                  "the chat model adds its LoRA adapter in float32)", 1.0, _LLAMACPP,
                  weight_format="q4_k_m"),
        Precision("served", "whatever an OpenAI-compatible server runs", 0, _SERVER),
    )
}


#: ``fast`` on a CPU, in order of preference: the first whose weights fit. int8 keeps the model's quality
#: (bundled model, passage perplexity: fp32 29.04, ov-int8 29.05, llama.cpp's Q4_K_M file 29.52, the kit's
#: data-free int4 46.6, int4 with AWQ and scale estimation 34.2, the same with 20% of layers in int8 31.5:
#: ``tests/test_llamacpp.py`` checks the bound) and decodes within ~10% of int4 here, since the tied
#: 262k-row embedding, int8 in both, is most of the bytes read per token. int4 is the fallback for models
#: whose int8 weights do not fit (Gemma 2 9B on a 16 GB laptop). llama.cpp (the kit's portable build, no
#: AVX-512) is slower here at the same quality: ``benchmarks/llamacpp_compare.py`` measured ov-int8 at
#: 2.76x its whole-call tok/s on the chat model (llama.cpp adds the adapter as a float32 LoRA at run time)
#: and 1.69x on ``bundled-base`` (the file alone), perplexity 0.997x and 0.993x llama.cpp's.
FAST_ON_CPU = ("ov-int8", "ov-int4")


def auto_precision(preset: Preset, hardware: Hardware | None = None, for_speed: bool = False) -> str:
    """The best precision for ``preset`` on ``hardware`` (default: this machine's), and why.

    * An OpenVINO export can only run as exported: ``ov-int4``.
    * A GPU with compute capability 8 or more (A100, L4, RTX 30xx and newer) computes bf16
      natively: ``bf16``, the full model at half fp32's bytes with fp32's range.
    * An older GPU (a T4 is 7.5) has no fast bf16, and fp16 is safe for Gemma 2 2B/9B only, so
      the weights go 4-bit (``bnb-nf4``, computing in float32), which also fits a 9B model in a
      T4's 15 GB; without bitsandbytes, ``fp32``.
    * On a CPU: with ``for_speed`` (chat, benchmarks) an OpenVINO export run by openvino-genai
      (:data:`FAST_ON_CPU`: int8 where its weights fit in memory, else int4); otherwise ``bf16``, which
      keeps the transformers API (``pipeline``, ``generate``, logits) that most lessons use.
    """
    if preset.fmt == Format.OPENVINO:
        return "ov-int4"
    if preset.fmt == Format.SERVER:
        return "served"
    hardware = hardware or Hardware.detect()
    if hardware.cuda_capability is not None:
        if hardware.cuda_capability[0] >= 8:
            return "bf16"
        return "bnb-nf4" if PRECISIONS["bnb-nf4"].unavailable_reason(preset, hardware) is None else "fp32"
    if for_speed:
        return next((name for name in FAST_ON_CPU if PRECISIONS[name].unavailable_reason(preset, hardware) is None),
                    "bf16")
    return "bf16"


def resolve(name: str | None, preset: Preset, hardware: Hardware | None = None) -> Precision:
    """The :class:`Precision` called ``name``.

    ``None`` or ``auto``: :func:`auto_precision`; ``fast``: the same with ``for_speed=True``.
    """
    if name is not None and not isinstance(name, str):
        raise UnknownPrecisionError(f"A precision is a name such as 'bf16', not {name!r}. "
                                    f"Known: auto, fast, {', '.join(PRECISIONS)}.")
    name = (name or "auto").strip().lower()
    if name in ("auto", "fast"):
        name = auto_precision(preset, hardware, for_speed=name == "fast")
    return lookup(name)


def lookup(name: str) -> Precision:
    """The row called ``name`` (not ``auto`` or ``fast``: those depend on the model and the machine)."""
    if name not in PRECISIONS:
        raise UnknownPrecisionError(f"Unknown precision {name!r}. Known: auto, fast, {', '.join(PRECISIONS)}.")
    return PRECISIONS[name]


def available(preset: Preset, hardware: Hardware | None = None) -> dict[str, str | None]:
    """Every precision's name with why it cannot run ``preset`` here (``None``: it can)."""
    hardware = hardware or Hardware.detect()
    return {name: p.unavailable_reason(preset, hardware) for name, p in PRECISIONS.items()}
