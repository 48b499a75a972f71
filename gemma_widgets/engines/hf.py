"""transformers and optimum-intel: ``model.generate`` with a streamer and a stop criterion.

:class:`TransformersEngine` runs a torch model (any dtype, bitsandbytes, compiled or not);
:class:`OptimumEngine` runs an OpenVINO IR through optimum-intel's ``OVModelForCausalLM``, the
same transformers API (``generate``, logits) on OpenVINO's runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from gemma_widgets.engines.base import SCORE_CHUNK, LocalEngine, threaded
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.templates import end_of_turn_ids


class StopOnEvent(StoppingCriteria):
    """A ``StoppingCriteria`` that ends ``generate`` after the step in which ``event`` was set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

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

    def __init__(self, model: Any, tokenizer: Any, path: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.stop_ids = end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
        self.context_window = int(getattr(model.config, "max_position_embeddings", 0) or 8192)

    @property
    def torch_model(self) -> Any:
        return self.model

    @property
    def device(self) -> Any:
        import torch

        return getattr(self.model, "device", torch.device("cpu"))

    def _ids(self, ids: Sequence[int]) -> Any:
        import torch

        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def token_stream(self, ids: Sequence[int], settings: Any, stop: threading.Event) -> Iterator[list[int]]:
        input_ids = self._ids(ids)

        def run(put: Callable[[list[int]], None]) -> None:
            import torch

            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=IdStreamer(put),
                    stopping_criteria=StoppingCriteriaList([StopOnEvent(stop)]),
                    eos_token_id=list(self.stop_ids), pad_token_id=self.tokenizer.pad_token_id,
                    **settings.generate_kwargs())

        return threaded(run)

    def generate_exact(self, ids: Sequence[int], n: int) -> list[int]:
        import torch

        input_ids = self._ids(ids)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        return greedy_exact(self.model, inputs, n, pad_token_id=self.tokenizer.pad_token_id)

    def score(self, ids: Sequence[int], keep_generator: bool = True) -> Iterator[Any]:
        """The decoder runs once; the output layer (with Gemma's final soft-cap) a chunk at a time,
        so the ``len(ids) x 262k`` logits are never held at once (390 MB in fp32 for the passage)."""
        import torch

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
        from gemma_widgets.recipe import describe, torch_rows

        return describe(torch_rows(self.model))


class OptimumEngine(TransformersEngine):
    """optimum-intel's ``OVModelForCausalLM`` on an OpenVINO IR folder."""

    name = "optimum-intel"

    @classmethod
    def from_ir(cls, folder: str) -> OptimumEngine:
        """optimum-intel's model on the IR in ``folder``, with the tokenizer saved beside it."""
        from gemma_widgets.engines.openvino import optimum_model
        from gemma_widgets.tokenizer import load_tokenizer

        return cls(optimum_model(folder), load_tokenizer(folder), folder)

    @property
    def torch_model(self) -> Any:
        return None  # OpenVINO compiles the IR itself

    @property
    def device(self) -> Any:
        import torch

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
    import torch

    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                             temperature=None, top_p=None, top_k=None, **kwargs)
    if str(getattr(model, "device", "cpu")).startswith("cuda"):
        torch.cuda.synchronize()
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def chunked_logits(model: Any, ids: Sequence[int]) -> Iterator[Any]:
    """Logits of an ``OVModelForCausalLM`` over ``ids``, read a chunk at a time through its KV cache
    as generation does (so the score includes the cache's precision: u8 on OpenVINO's CPU plugin)."""
    import torch

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
    from gemma_widgets.recipe import describe, nncf_settings, openvino_rows

    settings = nncf_settings(folder)
    return describe(openvino_rows(folder)) + (f" ({settings})" if settings else "")
