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
from typing import Any

from gemma_widgets.engines.base import CapabilityError, LocalEngine, threaded
from gemma_widgets.engines.hf import chunked_logits, ir_recipe, ir_weights_bytes
from gemma_widgets.templates import end_of_turn_ids


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
        from transformers import AutoConfig

        from gemma_widgets._openvino import genai_pipeline
        from gemma_widgets.tokenizer import load_tokenizer

        window = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", 0) or 8192
        return cls(genai_pipeline(folder), load_tokenizer(folder), folder, int(window))

    @property
    def can_score(self) -> bool:  # type: ignore[override]
        from gemma_widgets.precisions import optimum_reason

        return optimum_reason() is None

    def _inputs(self, ids: Sequence[int]) -> Any:
        import numpy as np
        import openvino as ov
        import openvino_genai as genai

        array = np.array([list(ids)], dtype=np.int64)
        return genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))

    def token_stream(self, ids: Sequence[int], settings: Any, stop: threading.Event) -> Iterator[list[int]]:
        import openvino_genai as genai

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
        import openvino_genai as genai

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
        from optimum.intel import OVModelForCausalLM

        from gemma_widgets._openvino import quiet_optimum

        with quiet_optimum():
            model = OVModelForCausalLM.from_pretrained(self.path)
        return chunked_logits(model, ids)

    def weights_bytes(self) -> int:
        return ir_weights_bytes(self.path)

    def recipe(self) -> str:
        return ir_recipe(self.path)
