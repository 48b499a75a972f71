"""OpenVINO exports of a model, cached on disk, and the two engines that run them.

An export is an OpenVINO IR folder (``openvino_model.xml``/``.bin``) written by optimum-intel,
with the Hugging Face tokenizer and the OpenVINO tokenizer/detokenizer (converted by
openvino-tokenizers) beside it. It is built once per (model, :class:`ExportSettings`) under
``cache_root()/openvino`` by :func:`gemma_widgets.cache.build_once`; later loads only read it.

Two engines run the same IR:

* ``openvino-genai`` (default, the fast one): ``LoadedModel.model`` is an
  ``openvino_genai.LLMPipeline``; its whole generate loop runs in C++. Call it with token ids
  (``openvino_genai.TokenizedInputs``) or text; stream with a ``StreamerBase`` whose ``write``
  returns ``StreamingStatus.STOP`` to stop. It gives no logits.
* ``optimum-intel``: ``LoadedModel.model`` is an ``optimum.intel.OVModelForCausalLM``, the
  transformers API (``generate`` with a ``TextIteratorStreamer``, ``model(ids).logits``). Its
  Python generate loop costs about a third of the speed at this model size.

In both, ``LoadedModel.tokenizer`` is the Hugging Face tokenizer (chat template, counting) and
``LoadedModel.path`` is the IR folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gemma_widgets.cache import build_once, cache_root, folder_digest
from gemma_widgets.errors import UnknownPrecisionError
from gemma_widgets.host.logs import quiet_logger
from gemma_widgets.host.native import inductor_kernels_intact
from gemma_widgets.host.packages import missing, unmet_requirement
from gemma_widgets.templates import ensure_chat_template
from gemma_widgets.tokenizer import read_tokenizer

TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"


@dataclass(frozen=True)
class ExportSettings:
    """How to compress the weights when exporting (nncf weight compression).

    Attributes:
        weight_format: ``fp16`` (no compression), ``int8`` (per output channel) or ``int4``.
        sym: symmetric quantization (a scale per group) instead of asymmetric (scale and zero
            point per group): a little faster and smaller, a little less accurate.
        group_size: how many consecutive weights share one scale (int4 only); smaller groups
            follow the weights more closely but store more scales. -1 means one per row.
        ratio: the share of the compressible layers put in int4; the rest stay int8.
        all_layers: also put the embedding and the last layer in int4 (by default nncf keeps
            them in int8). Gemma ties its output layer to its 262k-row embedding, the largest
            tensor of a small model, so this changes the bytes read per token a lot.
        awq: data-aware int4 (nncf's AWQ and scale estimation), calibrated on the package's
            ``calibration.txt``, never on the scored passage. On the bundled model: passage
            perplexity 34.2 against data-free int4's 46.6 (fp32: 29.04).
    """

    weight_format: str = "int4"
    sym: bool = False
    group_size: int = 64
    ratio: float = 1.0
    all_layers: bool = False
    awq: bool = False

    def __post_init__(self) -> None:
        kinds = {"sym": ((bool,), "true or false"), "all_layers": ((bool,), "true or false"),
                 "awq": ((bool,), "true or false"),
                 "group_size": ((int,), "a whole number"), "ratio": ((int, float), "a number")}
        for name, (types, wanted) in kinds.items():
            value = getattr(self, name)
            if not isinstance(value, types) or (types != (bool,) and isinstance(value, bool)):
                raise UnknownPrecisionError(
                    f"The OpenVINO export setting {name} must be {wanted}, not {value!r}.")
        if self.weight_format not in ("fp16", "int8", "int4"):
            raise UnknownPrecisionError(
                f"Unknown OpenVINO weight format {self.weight_format!r}: use fp16, int8 or int4.")
        if not 0.0 < self.ratio <= 1.0:
            raise UnknownPrecisionError(f"ratio must be in (0, 1], got {self.ratio}.")
        if self.group_size != -1 and self.group_size <= 0:
            raise UnknownPrecisionError(f"group_size must be positive or -1, got {self.group_size}.")
        if self.awq and self.weight_format != "int4":
            raise UnknownPrecisionError("awq is a setting of int4 exports only.")

    @property
    def key(self) -> str:
        """A short folder name that differs whenever a setting differs."""
        if self.weight_format != "int4":
            return self.weight_format
        mode = "sym" if self.sym else "asym"
        tail = ("-all" if self.all_layers else "") + ("-awq" if self.awq else "")
        return f"int4-{mode}-g{self.group_size}-r{self.ratio:g}{tail}"

    def quantization_config(self, source: str = "") -> Any:
        """The ``OVWeightQuantizationConfig`` for these settings (None for fp16); ``source`` (the model's
        folder or hub id) gives ``awq`` its tokenizer."""
        from optimum.intel import OVWeightQuantizationConfig  # optional: the exporter's package

        if self.weight_format == "fp16":
            return None
        if self.weight_format == "int8":
            return OVWeightQuantizationConfig(bits=8, sym=self.sym)
        data_aware: dict[str, Any] = {}
        if self.awq:
            texts = calibration_texts()
            data_aware = dict(dataset=texts, tokenizer=source, num_samples=len(texts), quant_method="awq",
                              scale_estimation=True)
        return OVWeightQuantizationConfig(bits=4, sym=self.sym, group_size=self.group_size,
                                          ratio=self.ratio, all_layers=self.all_layers, **data_aware)


def calibration_texts() -> list[str]:
    """The paragraphs of the package's calibration text (``data/calibration.txt``)."""
    text = resources.files("gemma_widgets").joinpath("data/calibration.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def export_dir(source: str, settings: ExportSettings) -> Path:
    """Where the export of ``source`` (a folder or hub id) with ``settings`` is cached.

    A local folder is keyed on its content (:func:`~gemma_widgets.cache.folder_digest`), so changed
    weights get a new export instead of the stale one; a hub id on its name.
    """
    name = Path(source).name or "model"
    if os.path.isdir(source):
        digest = folder_digest(Path(source))
    else:
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return cache_root() / "openvino" / f"{name}-{digest}-{settings.key}"


def save_ov_tokenizers(hf_tokenizer: Any, folder: Path) -> None:
    """Convert ``hf_tokenizer`` to OpenVINO tokenizer/detokenizer models inside ``folder``."""
    import openvino as ov  # optional: the OpenVINO packages
    from openvino_tokenizers import convert_tokenizer  # optional: the OpenVINO packages

    tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True)
    ov.save_model(tokenizer, folder / TOKENIZER_XML)
    ov.save_model(detokenizer, folder / DETOKENIZER_XML)


def export(source: str, settings: ExportSettings) -> Path:
    """The IR folder for ``source`` exported with ``settings``, built once (with a progress bar)."""

    def build(out: Path) -> dict:
        from optimum.intel import OVModelForCausalLM  # optional: the exporter's package

        inductor_kernels_intact()  # registers torch.bmm before the exporter swaps it for a while
        steps = tqdm(total=3, desc=f"Exporting to OpenVINO {settings.key} (once)", unit="step")
        steps.set_postfix_str("export and compress weights")
        config = settings.quantization_config(source)
        # The exporter's own tokenizer load warns spuriously, and tracing the model warns about
        # every Python-side check in transformers' code (TracerWarning): nothing a learner can act on.
        with quiet_logger("transformers"), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = OVModelForCausalLM.from_pretrained(
                source, export=True, compile=False, load_in_8bit=False, quantization_config=config)
        steps.update()
        steps.set_postfix_str("save IR")
        model.save_pretrained(out)
        tokenizer = read_tokenizer(source)
        ensure_chat_template(tokenizer)
        tokenizer.save_pretrained(out)
        steps.update()
        steps.set_postfix_str("convert tokenizers")
        save_ov_tokenizers(tokenizer, out)
        steps.update()
        steps.close()
        return {"source": source, "settings": asdict(settings)}

    return build_once(export_dir(source, settings), build)


def with_ov_tokenizers(folder: str) -> Path:
    """``folder`` if it has OpenVINO tokenizers, else a cached twin (links to its IR) that has."""
    path = Path(folder)
    if (path / TOKENIZER_XML).is_file() and (path / DETOKENIZER_XML).is_file():
        return path

    def build(out: Path) -> dict:
        for item in path.iterdir():
            (out / item.name).symlink_to(item.resolve())
        save_ov_tokenizers(read_tokenizer(path), out)
        return {"source": str(path)}

    return build_once(tokenizer_twin_dir(path), build)


def tokenizer_twin_dir(folder: Path) -> Path:
    """Where :func:`with_ov_tokenizers` caches ``folder``'s twin: keyed on the IR's content, since two
    folders with one base name (``ov_model``) are two models."""
    return cache_root() / "openvino" / f"{folder.name}-{folder_digest(folder)}-tokenizers"


#: OpenVINO's CPU plugin keeps the kernels it prepares for each input shape (up to 5000). A
#: chat's prompt is a new length every turn, which left ~2 MB a turn behind; 0 keeps none, and in
#: one interleaved run time to first token (17 and 500 prompt tokens) and decode tok/s stayed
#: within the machine's noise of the default.
CPU_PROPERTIES = {"CPU_RUNTIME_CACHE_CAPACITY": "0"}

#: Before a layer with compressed weights the CPU plugin quantizes the activations to int8, by
#: default in groups of 32. For per-channel int8 weights, groups of 128 prefilled a 600-token
#: prompt of the bundled model in 0.73x and 0.82x the time (fresh processes, two runs of 6
#: interleaved rounds); decode tok/s read 1.01-1.21x in four such runs: no gain beyond noise.
#: int4 weights (grouped by 64) prefilled 1.3x slower with 128 and keep the default.
INT8_WEIGHTS_PROPERTIES = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "128"}


def compression_mode(folder: str) -> str | None:
    """How nncf compressed the IR's weights (``int8_asym``, ``int4_sym``...), None if it did not."""
    import openvino as ov  # optional: the OpenVINO packages

    xml = Path(folder) / "openvino_model.xml"
    if not xml.is_file():
        return None
    model = ov.Core().read_model(xml)
    key = ["nncf", "weight_compression", "mode"]
    return model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None


def cpu_properties(folder: str) -> dict[str, str]:
    """The CPU plugin properties the kit compiles the IR in ``folder`` with."""
    mode = compression_mode(folder) or ""
    return {**CPU_PROPERTIES, **(INT8_WEIGHTS_PROPERTIES if mode.startswith("int8") else {})}


def quiet_optimum() -> contextlib.AbstractContextManager[None]:
    """Mute optimum-intel's "Could not infer whether the model was already converted" warning.

    Offline (``HF_HUB_OFFLINE=1``, as on Binder) ``OVModelForCausalLM.from_pretrained`` looks for a
    local IR folder in the hub cache, fails (``[Errno 2] ... refs/main``) and says so on stderr, which a
    learner reads as an error; the folders the kit loads are its own exports, so the guess is moot.
    """
    return quiet_logger("optimum.intel.openvino.modeling_base")


def optimum_model(folder: str, device: str = "CPU") -> Any:
    """optimum-intel's ``OVModelForCausalLM`` on the IR in ``folder``."""
    from optimum.intel import OVModelForCausalLM  # optional: the exporter's package

    properties = cpu_properties(folder) if device.upper() == "CPU" else {}
    with quiet_optimum():
        return OVModelForCausalLM.from_pretrained(folder, device=device, ov_config=dict(properties))


def optimum_reason() -> str | None:
    """Why optimum-intel (the exporter, and the ``optimum`` engine) cannot run here, or None."""
    reason = missing("optimum.intel", "nncf")
    if reason and not metadata.version("transformers").startswith("4."):  # Colab's stack
        return ("OpenVINO exports need optimum-intel, and no optimum-intel release accepts transformers 5 "
                "with huggingface_hub 2 (Colab's stack): export on a machine with requirements.txt's stack")
    return reason or unmet_requirement("optimum-intel")
