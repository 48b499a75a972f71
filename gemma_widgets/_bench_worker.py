"""One variant measured in a fresh process: ``python -m gemma_widgets._bench_worker``.

:func:`gemma_widgets.bench.run` starts this module once per variant, writes a JSON spec on its
stdin and reads one JSON event per line from its stdout. A process of its own per variant
means the peak memory it reports is that variant's alone, and a crash or an out-of-memory
kill ends this process, not the run. Anything a library prints goes to stderr, so the
event stream stays clean.

With ``prepare_only`` in the spec it only loads the variant (building any cache, such as an
OpenVINO export) and exits. The scenario, in order: load; warm-up; prefill repeats (generate
exactly one token: time to first token); decode repeats (``min_new_tokens == max_new_tokens``);
memory; the text of the last decode; quality on the package passage (after the memory reading,
so scoring's activations do not count as the variant's footprint).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemma_widgets.templates import chat_ids

Emit = Callable[..., None]
Generate = Callable[[list[int], int], list[int]]


def parse_variant(variant: str) -> tuple[str, dict[str, Any]]:
    """A variant name -> a precision and :func:`~gemma_widgets.load_model` options.

    ``"bf16"`` -> ``("bf16", {})``; ``"bf16+compile"`` -> ``("bf16", {"compile": True})``;
    ``"ov-int4+group_size=32+all_layers"`` -> ``("ov-int4", {"group_size": 32, "all_layers": True})``.
    """
    base, *flags = [part.strip() for part in variant.split("+")]
    options: dict[str, Any] = {}
    for flag in filter(None, flags):
        key, sep, value = flag.partition("=")
        options[key.strip()] = _option_value(value.strip()) if sep else True
    return base, options


def _option_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(text.lower(), text)


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """The prompt as token ids: through the chat template for instruction-tuned models."""
    if chat:
        return chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    return list(tokenizer(prompt).input_ids)


def _torch_generate(loaded: Any) -> Generate:
    """Greedy ``generate`` for transformers and optimum-intel models, exactly ``n`` new tokens."""
    import copy

    import torch

    model = loaded.model
    device = getattr(model, "device", torch.device("cpu"))
    base = copy.deepcopy(model.generation_config)
    base.update(do_sample=False, temperature=None, top_p=None, top_k=None, num_beams=1)
    pad = loaded.tokenizer.pad_token_id
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def generate(ids: list[int], n: int) -> list[int]:
        config = copy.deepcopy(base)
        config.update(max_new_tokens=n, min_new_tokens=n, pad_token_id=pad)
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 generation_config=config)
        sync()
        return out[0, len(ids):].tolist()

    return generate


def _genai_generate(loaded: Any) -> Generate:
    """Greedy ``LLMPipeline.generate`` on token ids, so every engine sees the same prompt."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    pipe = loaded.model

    def generate(ids: list[int], n: int) -> list[int]:
        config = ov_genai.GenerationConfig()
        config.max_new_tokens = n
        config.min_new_tokens = n
        config.ignore_eos = True
        config.do_sample = False
        array = np.array([ids], dtype=np.int64)
        inputs = ov_genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))
        return list(pipe.generate(inputs, config).tokens[0])

    return generate


def generator(loaded: Any) -> Generate:
    """The greedy, fixed-length generate function for ``loaded``'s engine."""
    if loaded.engine == "openvino-genai":
        return _genai_generate(loaded)
    return _torch_generate(loaded)


def weights_bytes(loaded: Any) -> int:
    """Bytes the weights take: the torch tensors, or the OpenVINO IR's weight file."""
    if loaded.engine == "transformers":
        return int(loaded.model.get_memory_footprint())
    folder = Path(getattr(loaded.model, "model_save_dir", None) or loaded.path)
    return sum(p.stat().st_size for p in folder.glob("openvino_model.bin"))


def peak_rss_bytes() -> int:
    """This process's high-water resident memory.

    On Linux it is ``VmHWM``: ``ru_maxrss`` survives fork and exec, so a worker started by a
    notebook kernel holding 3 GB would report at least 3 GB. macOS reports bytes in ru_maxrss.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_cuda_bytes() -> int | None:
    if "torch" not in sys.modules:
        return None
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def measure(spec: dict[str, Any], emit: Emit) -> None:
    """Run the scenario for ``spec`` (see :mod:`gemma_widgets.bench`), emitting events."""
    from gemma_widgets.errors import GenerationError
    from gemma_widgets.generation import hf_tokenizer
    from gemma_widgets.models import load_model
    from gemma_widgets.quality import score_passage

    precision, flags = parse_variant(spec["variant"])
    n, repeats = int(spec["new_tokens"]), int(spec["repeats"])
    start = time.perf_counter()
    loaded = load_model(spec["model"], precision=precision, **flags)
    load_s = time.perf_counter() - start
    if spec.get("prepare_only"):  # caches are built now; the measuring process only reads them
        emit("prepared", seconds=load_s)
        return
    emit("loaded", engine=loaded.engine, load_s=load_s, weights_bytes=weights_bytes(loaded),
         notes=list(loaded.notes))
    tokenizer = hf_tokenizer(loaded)
    ids = prompt_ids(tokenizer, spec["prompt"], loaded.preset.instruction_tuned)
    generate = generator(loaded)
    emit("prompt", prompt_tokens=len(ids))

    for i in range(int(spec["warmup"])):
        generate(ids, n)
        emit("step", stage="warmup", done=i + 1)
    for i in range(repeats):
        t0 = time.perf_counter()
        generate(ids, 1)
        emit("step", stage="prefill", done=i + 1, seconds=time.perf_counter() - t0)
    tokens: list[int] = []
    for i in range(repeats):
        t0 = time.perf_counter()
        tokens = generate(ids, n)
        seconds = time.perf_counter() - t0
        if len(tokens) != n:
            raise GenerationError(f"asked for exactly {n} new tokens, got {len(tokens)}")
        emit("step", stage="decode", done=i + 1, seconds=seconds)
    rss = _rss_bytes()  # the kernel updates its high-water mark lazily: never report less than now
    emit("memory", peak_rss_bytes=max(peak_rss_bytes(), rss), rss_bytes=rss,
         peak_cuda_bytes=_peak_cuda_bytes())
    emit("text", text=tokenizer.decode(tokens, skip_special_tokens=True))
    if spec.get("quality", True):
        if loaded.engine == "openvino-genai":  # it gives no logits: scoring loads an optimum-intel twin,
            del generate                      # so free the pipeline's copy of the weights first
            loaded.model = None
            gc.collect()
        scores = score_passage(loaded, spec.get("passage_tokens"))
        emit("quality", perplexity=scores.perplexity, top1=scores.top1)
    emit("step", stage="quality", done=1)


def main() -> int:
    """Read the spec from stdin, measure, and report events on (the original) stdout."""
    spec = json.loads(sys.stdin.read())
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: str, **data: Any) -> None:
        events.write(json.dumps({"event": event, **data}) + "\n")

    from gemma_widgets.errors import GemmaWidgetsError, PrecisionUnavailableError

    try:
        measure(spec, emit)
    except PrecisionUnavailableError as exc:
        emit("error", status="unavailable", message=str(exc))
        return 3
    except GemmaWidgetsError as exc:
        emit("error", status="failed", message=str(exc))
        return 2
    except Exception as exc:  # any failure is this variant's result, reported to the parent
        traceback.print_exc()
        emit("error", status="failed", message=f"{type(exc).__name__}: {exc}")
        return 1
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
