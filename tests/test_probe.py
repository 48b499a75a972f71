"""Native code is tried in a child process first: a llama.cpp that dies on this CPU is reported."""

from __future__ import annotations

import signal
import subprocess
import textwrap

import pytest

from gemma_widgets import load_model, precisions
from gemma_widgets.engines import llamacpp
from gemma_widgets.errors import PrecisionUnavailableError
from gemma_widgets.host import probe as _probe
from gemma_widgets.presets import resolve_preset

#: A stand-in llama_cpp whose first decode kills its process with SIGILL, as a build for
#: instructions the CPU lacks does (an AVX-512 build on an AVX2 CPU).
DIES_ON_DECODE = '''
import os, signal

class Llama:
    def __init__(self, model_path, **kwargs):
        self.model_path = model_path

    def tokenize(self, text):
        return [2, 3]

    def generate(self, tokens, **kwargs):
        os.kill(os.getpid(), signal.SIGILL)
        yield 0
'''


@pytest.fixture
def sigill_llama_cpp(tmp_path, monkeypatch):
    """``import llama_cpp`` finds the stand-in, here and in child processes; a fresh kit cache."""
    package = tmp_path / "standin" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(DIES_ON_DECODE))
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    monkeypatch.setattr(_probe, "_cache_file", lambda: tmp_path / "cache" / "native-probes.json")
    monkeypatch.setattr("gemma_widgets.engines.llamacpp.bundled_gguf", lambda: tmp_path / "model.gguf")
    return package


def test_a_llama_cpp_that_dies_on_this_cpu_is_unavailable_with_the_cause_and_the_fix(sigill_llama_cpp):
    reason = precisions.available(resolve_preset("bundled"))["gguf-q4_k_m"]
    assert reason is not None and "SIGILL" in reason and "Illegal instruction" in reason
    assert "make install-llamacpp" in reason


@pytest.mark.integration
def test_loading_it_raises_a_clear_error_and_the_process_survives(sigill_llama_cpp):
    with pytest.raises(PrecisionUnavailableError, match="SIGILL"):
        load_model("bundled", "gguf-q4_k_m")


def test_the_other_precisions_are_unaffected(sigill_llama_cpp):
    reasons = precisions.available(resolve_preset("bundled"))
    assert reasons["gguf-q4_k_m"] is not None
    assert reasons["fp32"] is None and reasons["bf16"] is None


def test_the_server_is_unavailable_too(sigill_llama_cpp):
    from gemma_widgets.engines import llamacpp_server

    reason = llamacpp_server.unavailable_reason()
    assert reason is None or "SIGILL" in reason  # None only where the server's other packages are missing
    if all(_probe.build_signature(m) for m in llamacpp_server._NEEDS):
        assert reason is not None


def test_the_verdict_is_cached_per_build(sigill_llama_cpp, monkeypatch):
    first = llamacpp.unavailable_reason("model.gguf")
    calls = []
    monkeypatch.setattr(_probe.subprocess, "run",
                        lambda *a, **k: calls.append(a) or subprocess.CompletedProcess(a, 0, "", ""))
    assert llamacpp.unavailable_reason("model.gguf") == first and not calls
    (sigill_llama_cpp / "__init__.py").write_text("class Llama: pass\n# rebuilt\n")  # a new build
    assert llamacpp.unavailable_reason("model.gguf") is None and len(calls) == 1


@pytest.mark.parametrize(("code", "expected"), [(-signal.SIGILL, "SIGILL"), (-signal.SIGSEGV, "SIGSEGV"),
                                                (1, "ImportError: no symbol")])
def test_each_kind_of_failure_is_named(code, expected):
    assert expected in _probe._failure("lib", code, "Traceback\nImportError: no symbol\n")


@pytest.mark.integration
def test_the_installed_llama_cpp_passes_the_probe_on_this_cpu():
    """The build `make install` made (portable: AVX2, no AVX-512) decodes the bundled GGUF here."""
    if _probe.build_signature("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    from gemma_widgets.offline.bundled import bundled_gguf

    assert llamacpp.unavailable_reason(str(bundled_gguf())) is None
