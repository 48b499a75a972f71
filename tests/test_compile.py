"""torch.compile helpers: static caches, padding, recompile counts, compiled load, fallbacks."""

from __future__ import annotations

import os

import pytest
import torch

from gemma_widgets import compilation
from gemma_widgets.bench import compiled as bench_compile
from gemma_widgets.errors import GemmaWidgetsError

PROMPTS = ("Hello there", "Hello there, how are you today, my friend?")


@pytest.fixture(scope="module", autouse=True)
def _inductor_cache():
    compilation.use_inductor_cache()  # the kit's persistent folder: CI's second run compiles from disk


@pytest.fixture
def eager(tiny):
    yield tiny
    compilation.uncompile(tiny.model)


@pytest.mark.model
def test_static_cache_gives_sliding_layers_a_window_sized_buffer(tiny):
    import transformers
    from transformers import StaticCache

    cache = compilation.static_cache(tiny.model, 64)
    window = tiny.model.config.sliding_window
    kinds = tiny.model.config.layer_types
    assert [layer.is_sliding for layer in cache.layers] == [k == "sliding_attention" for k in kinds]
    assert [layer.keys.shape[2] for layer in cache.layers] == [
        min(window, 64) if k == "sliding_attention" else 64 for k in kinds]
    hybrid = getattr(transformers, "HybridCache", None)  # 4.57: a deprecated alias; 5: gone
    assert hybrid is None or issubclass(hybrid, StaticCache)


@pytest.mark.model
def test_encode_left_pads_to_a_multiple(tiny):
    plain = compilation.encode(tiny.tokenizer, PROMPTS[1], tiny.model.device)
    padded = compilation.encode(tiny.tokenizer, PROMPTS[1], tiny.model.device, pad_to_multiple_of=32)
    n = plain["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] == compilation.round_up(n, 32) == 32
    assert padded["input_ids"][0, -n:].tolist() == plain["input_ids"][0].tolist()
    assert padded["attention_mask"][0].tolist() == [0] * (32 - n) + [1] * n


def test_round_up():
    assert [compilation.round_up(n, 64) for n in (1, 64, 65)] == [64, 64, 128]


@pytest.mark.model
def test_unknown_mode_and_variant_are_clear_errors(tiny):
    with pytest.raises(GemmaWidgetsError, match="max-autotune-no-cudagraphs"):
        compilation.check_mode("fastest")
    with pytest.raises(ValueError, match="eager-static"):
        bench_compile.measure(tiny, variants=("turbo",))


def test_default_mode_per_device():
    assert compilation.default_mode("cuda") == "reduce-overhead"
    assert compilation.default_mode("cpu") == "default"


def test_use_inductor_cache_sets_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compilation.use_inductor_cache(tmp_path / "ind") == tmp_path / "ind"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "ind")


def test_the_kit_cache_wins_over_torchs_temporary_default_not_over_the_users(tmp_path, monkeypatch):
    """Loading a model makes torch write its default, /tmp/torchinductor_<user>, into the environment;
    the kit's persistent folder replaces that, and only that."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setattr(compilation, "inductor_cache_dir", lambda: tmp_path / "kit")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert compilation.use_inductor_cache() == tmp_path / "kit"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compilation.use_inductor_cache() == tmp_path / "mine"


@pytest.mark.model
def test_measure_eager_variants_gives_records(eager):
    records = bench_compile.measure(eager, new_tokens=3, variants=("eager-dynamic", "eager-static"), repeats=2)
    assert [r.variant for r in records] == ["eager-dynamic", "eager-static"]
    for r in records:
        assert r.graphs == 0 and r.mode == "" and len(r.seconds) == 2 and len(r.warmup_seconds) == 2
        assert r.tokens_per_second > 0 and r.spread[0] <= r.tokens_per_second <= r.spread[1]
        assert r.as_dict()["tokens_per_second"] == r.tokens_per_second
    assert "eager-static" in bench_compile.format_records(records)
    assert eager.model.generation_config.cache_implementation is None  # left eager


@pytest.mark.slow
def test_padding_prompts_avoids_recompiles(eager):
    """The seed's recipe compiles the prefill too: a new prompt length recompiles, padding does not."""
    model, tok = eager.model, eager.tokenizer
    torch._dynamo.reset()

    def run(inputs, new_tokens=3):
        cache = compilation.static_cache(model, 64)
        with compilation.count_graphs() as count:
            _, ids = bench_compile.time_generate(model, inputs, new_tokens, past_key_values=cache, disable_compile=True)
        return count, ids

    # the eager reference
    expected = [run(compilation.encode(tok, p, model.device, pad_to_multiple_of=32))[1] for p in PROMPTS]
    compilation.compile_forward(model, "default")
    first, ids0 = run(compilation.encode(tok, PROMPTS[0], model.device, pad_to_multiple_of=32))
    second, ids1 = run(compilation.encode(tok, PROMPTS[1], model.device, pad_to_multiple_of=32))
    assert first.graphs >= 1 and second.graphs == 0
    assert [ids0, ids1] == expected  # compiling does not change greedy output
    unpadded, _ = run(compilation.encode(tok, PROMPTS[0], model.device))
    assert unpadded.graphs >= 1
    assert any("size mismatch" in reason for reason in unpadded.reasons)


@pytest.mark.slow
def test_load_model_compile_serves_new_lengths_without_recompiling():
    from gemma_widgets import load_model

    lm = load_model("tiny-random-gemma2", precision="fp32", compile=True)
    assert lm.compiled == "default", lm.notes
    assert any("compiled decode step" in note for note in lm.notes)
    window = lm.model.config.sliding_window
    with compilation.count_graphs() as count:
        for prompt, new_tokens in (("Hi", 3), ("Hello there, how are", 6)):
            inputs = compilation.encode(lm.tokenizer, prompt, lm.model.device)
            assert inputs["input_ids"].shape[1] + new_tokens < window  # filling the window adds a graph
            bench_compile.time_generate(lm.model, inputs, new_tokens)
    assert count.graphs == 0, count.reasons


@pytest.mark.model
def test_compile_failure_falls_back_to_eager(eager, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("inductor: C++ compile failed\nlong log")

    monkeypatch.setattr(compilation, "greedy_exact", broken)
    lm = compilation.enable_compile(eager, "default")
    assert calls and lm.compiled is None
    assert "failed, running eager: RuntimeError: inductor: C++ compile failed" in lm.notes[-1]
    assert lm.model.generation_config.compile_config is None and not hasattr(lm.model, "_cache")
    monkeypatch.undo()
    inputs = compilation.encode(lm.tokenizer, "Hi", lm.model.device)
    assert len(bench_compile.time_generate(lm.model, inputs, 2)[1]) == 2


@pytest.mark.model
def test_missing_compiler_is_a_reason_not_a_crash(eager, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    assert "C++ compiler" in compilation.compile_unavailable_reason("cpu")
    lm = compilation.enable_compile(eager, True)
    assert lm.compiled is None and "skipped, running eager" in lm.notes[-1]


@pytest.mark.integration
def test_left_padding_keeps_the_bundled_models_answer(bundled):
    model, tok = bundled.model, bundled.tokenizer
    prompt = "The capital of France is"
    results = []
    for multiple in (None, 64):
        inputs = compilation.encode(tok, prompt, model.device, pad_to_multiple_of=multiple)
        cache = compilation.static_cache(model, 128)
        results.append(bench_compile.time_generate(model, inputs, 8, past_key_values=cache, disable_compile=True)[1])
    assert results[0] == results[1]


# bench_compile.first_call (a cold start, then a second start that loads every graph from the folder) is
# asserted in notebooks/05_torch_compile.ipynb section 5, which nbval runs in this suite: ~50 s
# of compiling, paid once.


@pytest.mark.model
def test_cache_length_is_the_global_layers_length(tiny):
    cache = compilation.static_cache(tiny.model, 64)
    assert compilation.cache_length(cache) == 64 and min(layer.max_cache_len for layer in cache.layers) == 16


#: A process where torch.bmm is swapped (as OpenVINO's exporter does while tracing) when inductor
#: first registers its kernels; prints the folder use_inductor_cache then picks.
TAINTED = """
import torch
real = torch.bmm

def wrapper(*args, **kwargs):
    return real(*args, **kwargs)

torch.bmm = wrapper
import torch._inductor.kernel.bmm
torch.bmm = real
import warnings
warnings.simplefilter("ignore")
from gemma_widgets import compilation
print(compilation.use_inductor_cache())
"""


@pytest.mark.slow
def test_a_process_whose_inductor_registered_a_wrapper_never_writes_the_shared_cache(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "GEMMA_WIDGETS_CACHE": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": ""}
    done = subprocess.run([sys.executable, "-c", TAINTED], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    chosen = done.stdout.split()[-1]
    assert "private" in chosen and not chosen.startswith(str(tmp_path))


#: An export whose tracing imports inductor's kernels while OpenVINO's frontend has swapped torch.bmm.
EXPORT_DURING_SWAP = """
import sys, optimum.intel
from openvino.frontend.pytorch import patch_model
from gemma_widgets.engines import openvino as _openvino
from gemma_widgets.host.native import inductor_kernels_intact

def traced(*args, **kwargs):
    patch_model._patch_torch_functions()
    import torch._inductor.kernel.bmm, torch._inductor.kernel.mm
    patch_model._unpatch_torch_functions()
    raise SystemExit(0 if inductor_kernels_intact() else 3)

optimum.intel.OVModelForCausalLM.from_pretrained = traced
_openvino.export(sys.argv[1], _openvino.ExportSettings(weight_format="int8"))
"""


@pytest.mark.slow
@pytest.mark.skipif(compilation.compile_unavailable_reason() is not None, reason="no compiler here")
def test_an_export_leaves_inductor_with_torchs_own_kernels(tmp_path, tiny):
    """The kit registers inductor's kernels before an OpenVINO export swaps torch.bmm for a while."""
    import subprocess
    import sys

    pytest.importorskip("optimum.intel")  # the exporter: not on Colab's stack
    pytest.importorskip("openvino.frontend.pytorch.patch_model")
    env = {**os.environ, "GEMMA_WIDGETS_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", EXPORT_DURING_SWAP, tiny.path], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
