"""transformers and optimum-intel: ``model.generate`` with a streamer and a stop criterion.

:class:`TransformersEngine` runs a torch model (any dtype, bitsandbytes, compiled or not);
:class:`OptimumEngine` runs an OpenVINO IR through optimum-intel's ``OVModelForCausalLM``, the
same transformers API (``generate``, logits) on OpenVINO's runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    DynamicCache,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from gemma_widgets.engines.base import SCORE_CHUNK, LocalEngine, threaded
from gemma_widgets.engines.openvino import optimum_model
from gemma_widgets.engines.spec import Backend, Format, Options, Precision, Preset, served_elsewhere, too_big
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.hardware import Hardware
from gemma_widgets.host.packages import missing
from gemma_widgets.recipe import describe, nncf_settings, openvino_rows, torch_rows
from gemma_widgets.templates import end_of_turn_ids
from gemma_widgets.tokenizer import load_tokenizer


class StopOnEvent(StoppingCriteria):
    """A ``StoppingCriteria`` that ends ``generate`` after the step in which ``event`` was set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class IdStreamer(BaseStreamer):
    """A streamer that hands each step's new token ids to ``put`` (the prompt is skipped)."""

    def __init__(self, put: Callable[[list[int]], None]):
        self._put = put
        self._prompt = True

    def put(self, value: Any) -> None:
        if len(value.shape) > 1 and value.shape[0] > 1:
            raise GemmaWidgetsError("The chat streams one conversation at a time (batch size 1).")
        if self._prompt:
            self._prompt = False
            return
        self._put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class TransformersEngine(LocalEngine):
    """A transformers model: ``generate`` for text, one decoder pass for logits."""

    name = "transformers"
    can_score = True

    #: Whether :meth:`token_stream` keeps the KV cache for the next call (optimum-intel's model keeps its own).
    reuses_prefix = True

    def __init__(self, model: Any, tokenizer: Any, path: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self._cache: DynamicCache | None = None
        self._cached_ids: list[int] = []  # the tokens whose keys and values ``_cache`` holds
        self.stop_ids = end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
        self.context_window = int(getattr(model.config, "max_position_embeddings", 0) or 8192)

    @property
    def torch_model(self) -> Any:
        return self.model

    @property
    def device(self) -> Any:
        return getattr(self.model, "device", torch.device("cpu"))

    def _ids(self, ids: Sequence[int]) -> Any:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def token_stream(self, ids: Sequence[int], settings: Any, stop: threading.Event) -> Iterator[list[int]]:
        """``generate`` in a thread; the KV cache of the previous call is reused for the prefix the two share
        (:meth:`reusable_cache`), so a chat's next turn prefills only its new tokens. In float32 the reply is
        the one a fresh prefill gives, token for token; in bfloat16 the cached keys of a reply (computed a
        token at a time) round differently from a fresh prefill's (one batch), so a near-tie may break the
        other way, as between any two bf16 kernels (``tests/test_prefix_reuse.py``)."""
        input_ids = self._ids(ids)
        cache = self.reusable_cache(ids)
        self._cache, made = None, []  # until this call ends well, no cache is trusted

        def run(put: Callable[[list[int]], None]) -> None:
            def keep(new: list[int]) -> None:
                made.extend(new)
                put(new)

            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=IdStreamer(keep),
                    stopping_criteria=StoppingCriteriaList([StopOnEvent(stop)]),
                    eos_token_id=list(self.stop_ids), pad_token_id=self.tokenizer.pad_token_id,
                    past_key_values=cache, **settings.generate_kwargs())
            if cache is not None:  # it now holds every token but the last one made
                self._cache, self._cached_ids = cache, [*ids, *made][:cache.get_seq_length()]

        return threaded(run)

    def reusable_cache(self, ids: Sequence[int]) -> DynamicCache | None:
        """A ``DynamicCache`` for a call on ``ids``: the last call's, cropped to the prefix ``ids`` share with
        what it holds (keeping at least one token to prefill), or a new one; None where generate keeps its
        own cache (a compiled model's static one) or this engine reuses none.

        A sliding-window layer (Gemma 2's every other layer, most of Gemma 3's) keeps only its last window
        of tokens, so a cache past the window can grow but not be cropped: then a new one is started.
        """
        if not self.reuses_prefix or getattr(self.model.generation_config, "cache_implementation", None):
            return None
        held, cache = self._cached_ids, self._cache
        shared = 0
        for a, b in zip(held, ids[:-1], strict=False):
            if a != b:
                break
            shared += 1
        if cache is None or shared == 0:
            return DynamicCache(config=self.model.config)
        if shared < len(held):
            try:
                cache.crop(shared)
            except (ValueError, RuntimeError):  # a sliding layer past its window cannot go back (transformers 4, 5)
                return DynamicCache(config=self.model.config)
        return cache

    def generate_exact(self, ids: Sequence[int], n: int) -> list[int]:
        input_ids = self._ids(ids)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        return greedy_exact(self.model, inputs, n, pad_token_id=self.tokenizer.pad_token_id)

    def score(self, ids: Sequence[int], keep_generator: bool = True) -> Iterator[Any]:
        """The decoder runs once; the output layer (with Gemma's final soft-cap) a chunk at a time,
        so the ``len(ids) x 262k`` logits are never held at once (390 MB in fp32 for the passage)."""
        input_ids = self._ids(ids)
        head = self.model.get_output_embeddings()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        with torch.inference_mode():
            hidden = self.model.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      use_cache=False).last_hidden_state[0]
            for start in range(0, len(ids), SCORE_CHUNK):
                logits = head(hidden[start:start + SCORE_CHUNK])
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                yield logits.to("cpu")

    def weights_bytes(self) -> int:
        return int(self.model.get_memory_footprint())

    def recipe(self) -> str:
        return describe(torch_rows(self.model))


class OptimumEngine(TransformersEngine):
    """optimum-intel's ``OVModelForCausalLM`` on an OpenVINO IR folder."""

    name = "optimum-intel"
    reuses_prefix = False  # the IR is stateful: OpenVINO keeps the KV cache inside the compiled model

    @classmethod
    def from_ir(cls, folder: str) -> OptimumEngine:
        """optimum-intel's model on the IR in ``folder``, with the tokenizer saved beside it."""
        return cls(optimum_model(folder), load_tokenizer(folder), folder)

    @property
    def torch_model(self) -> Any:
        return None  # OpenVINO compiles the IR itself

    @property
    def device(self) -> Any:
        return torch.device("cpu")

    def score(self, ids: Sequence[int], keep_generator: bool = True) -> Iterator[Any]:
        return chunked_logits(self.model, ids)

    def weights_bytes(self) -> int:
        return ir_weights_bytes(self.path)

    def recipe(self) -> str:
        return ir_recipe(self.path)


def greedy_exact(model: Any, inputs: Any, n: int, **kwargs: Any) -> list[int]:
    """Exactly ``n`` greedy new token ids from ``model.generate(**inputs)`` (``kwargs`` go to ``generate``);
    on a GPU it waits for the device, so a timer around it measures the work."""
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                             temperature=None, top_p=None, top_k=None, **kwargs)
    if str(getattr(model, "device", "cpu")).startswith("cuda"):
        torch.cuda.synchronize()
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def chunked_logits(model: Any, ids: Sequence[int]) -> Iterator[Any]:
    """Logits of an ``OVModelForCausalLM`` over ``ids``, read a chunk at a time through its KV cache
    as generation does (so the score includes the cache's precision: u8 on OpenVINO's CPU plugin)."""
    input_ids = torch.tensor([list(ids)], dtype=torch.long)
    mask = torch.ones_like(input_ids)
    past = None  # None starts a fresh sequence (a stateful OpenVINO model resets its cache)
    with torch.inference_mode():
        for start in range(0, len(ids), SCORE_CHUNK):
            end = min(start + SCORE_CHUNK, len(ids))
            out = model(input_ids=input_ids[:, start:end], past_key_values=past, attention_mask=mask[:, :end])
            past = out.past_key_values
            yield out.logits[0].to("cpu", copy=True)  # the next call reuses the output buffer


def ir_weights_bytes(folder: str) -> int:
    """Bytes of an OpenVINO IR's weight file."""
    return sum(p.stat().st_size for p in Path(folder).glob("openvino_model.bin"))


def ir_recipe(folder: str) -> str:
    """An OpenVINO IR's recipe: its weights' precisions, then how nncf compressed them."""
    settings = nncf_settings(folder)
    return describe(openvino_rows(folder)) + (f" ({settings})" if settings else "")


#: float16's largest value. The bundled Gemma 3 270M's residual stream passes it on ordinary
#: prompts (notebook 03 measures ~1e5), so in fp16 it turns to inf, then NaN, and greedy decoding
#: picks token 0, ``<pad>``, forever. For Gemma 2, Hugging Face's guidance is that fp16 works for
#: 9B (its card offers a ``float16`` revision) and is erratic for 27B; 2B is undocumented, and allowed with a note.
FP16_MAX = 65504.0


@dataclass(frozen=True)
class TorchOptions(Options):
    """``from_pretrained`` options a torch precision passes on."""

    attn_implementation: str | None = None
    revision: str | None = None
    low_cpu_mem_usage: bool | None = None

    def from_pretrained(self, path: str) -> dict[str, Any]:
        """The keyword arguments to pass: those set, and eager attention for a soft-capping Gemma 2.

        Gemma 2 soft-caps its attention scores (``50 * tanh(s / 50)``); transformers' SDPA attention
        cannot apply that cap and drops it, so Gemma 2 loads with eager attention, which keeps it
        (``tests/test_gemma2.py`` checks both caps against a hand computation). Gemma 3 has no cap.
        """
        kwargs = {f.name: getattr(self, f.name) for f in fields(TorchOptions) if getattr(self, f.name) is not None}
        if "attn_implementation" not in kwargs and getattr(AutoConfig.from_pretrained(path),
                                                           "attn_logit_softcapping", None):
            kwargs["attn_implementation"] = "eager"
        return kwargs


@dataclass(frozen=True)
class BnbOptions(TorchOptions):
    """A bitsandbytes precision's options: ``double_quant`` also quantizes the 4-bit scales."""

    double_quant: bool = False


def bnb_dtype(hardware: Hardware | None = None) -> torch.dtype:
    """The dtype of everything bitsandbytes does not quantize, and of its compute.

    It must be given explicitly: without ``dtype``, transformers 4.57 loads a bitsandbytes model
    in **float16** (its bnb quantizer's default), so the embedding, the norms and Gemma's residual
    stream are float16; the stream passes 65504, turns to inf then NaN, and greedy decoding
    returns only ``<pad>`` (id 0). bfloat16 has float32's range: used on CPUs and on GPUs with
    compute capability 8 or more. Older GPUs (a T4 is 7.5) have no fast bf16, and fp16 is the
    trap above, so they compute in float32.
    """
    capability = (hardware or Hardware.detect()).cuda_capability
    return torch.float32 if capability is not None and capability[0] < 8 else torch.bfloat16


def bnb_config(precision: Precision, double_quant: bool = False, hardware: Hardware | None = None,
               **extra: Any) -> BitsAndBytesConfig:
    """The ``BitsAndBytesConfig`` for a bitsandbytes precision (int8, nf4 or fp4 weights)."""
    if precision.weight_format == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **extra)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=precision.weight_format,
                              bnb_4bit_compute_dtype=bnb_dtype(hardware),
                              bnb_4bit_use_double_quant=double_quant, **extra)


class TorchBackend(Backend):
    """A transformers model in a torch dtype (``fp32``, ``bf16``, ``fp16``)."""

    options = TorchOptions

    def unavailable_reason(self, precision: Precision, preset: Preset, hardware: Hardware) -> str | None:
        if preset.fmt == Format.OPENVINO:
            return f"{preset.name} is an OpenVINO export; use ov-int4"
        reason = served_elsewhere(preset) or too_big(preset, precision.bytes_per_param, hardware)
        if reason or precision.dtype != "float16":
            return reason
        if preset.family == "gemma2" and "27b" not in preset.name.lower():
            return None
        if preset.family == "gemma2":
            return ("Hugging Face's Gemma 2 guidance: float16 is erratic for 27B; use bf16 "
                    "(or, on a T4, bnb-nf4 or fp32)")
        return (f"this model's activations (about 1e5 for Gemma 3 270M, measured in notebook 03) overflow "
                f"float16 (max {FP16_MAX:.0f}): logits become NaN and every token <pad>; use bf16 (or, on "
                "a T4, bnb-nf4 or fp32)")

    def from_pretrained(self, precision: Precision, path: str, options: TorchOptions,
                        hardware: Hardware) -> Any:
        return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, str(precision.dtype)),
                                                    device_map="auto" if hardware.cuda else None,
                                                    **options.from_pretrained(path))

    def load(self, precision: Precision, preset: Preset, path: str, options: TorchOptions,
             hardware: Hardware) -> tuple[TransformersEngine, list[str]]:
        model = self.from_pretrained(precision, path, options, hardware).eval()
        return TransformersEngine(model, load_tokenizer(path), path), [precision.note] if precision.note else []


class BnbBackend(TorchBackend):
    """bitsandbytes: int8 or 4-bit weights; the rest, and compute, in :func:`bnb_dtype`."""

    options = BnbOptions

    def unavailable_reason(self, precision: Precision, preset: Preset, hardware: Hardware) -> str | None:
        return super().unavailable_reason(precision, preset, hardware) or missing("bitsandbytes")

    def from_pretrained(self, precision: Precision, path: str, options: TorchOptions,
                        hardware: Hardware) -> Any:
        double_quant = isinstance(options, BnbOptions) and options.double_quant
        return AutoModelForCausalLM.from_pretrained(
            path, quantization_config=bnb_config(precision, double_quant, hardware), dtype=bnb_dtype(hardware),
            device_map="auto" if hardware.cuda else None, **options.from_pretrained(path))

    def load(self, precision: Precision, preset: Preset, path: str, options: TorchOptions,
             hardware: Hardware) -> tuple[TransformersEngine, list[str]]:
        engine, _ = super().load(precision, preset, path, options, hardware)
        return engine, [f"non-quantized layers and compute in {str(bnb_dtype(hardware)).removeprefix('torch.')}"]
