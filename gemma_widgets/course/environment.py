"""Where a notebook runs (local, Binder, Colab), what that machine can do, and what to load there.

Every notebook's first code cell calls :func:`setup`, which makes the three places alike:
on Colab it enables the custom widget manager and reads ``HF_TOKEN`` from Colab's secrets;
everywhere it quiets library chatter, reports the hardware, and suggests a model and precision
that fit it (``env.suggested_model``, ``env.suggested_precision``), saying why.

>>> env = setup()                                     # doctest: +SKIP
local: 2 CPU cores, 24 GB RAM, no GPU, HF token not set (Python 3.11.7)
Suggested: bundled in bf16 (no GPU: the offline Gemma 3 270M runs on any CPU)
>>> lm = load_model(env.suggested_model, env.suggested_precision)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata

import psutil
import torch
import transformers
from huggingface_hub import constants, get_token, try_to_load_from_cache

from gemma_widgets.host.hardware import Hardware, memory_limit_bytes, usable_cores
from gemma_widgets.host.packages import installed
from gemma_widgets.precisions import PRECISIONS, auto_precision
from gemma_widgets.presets import ENV_MODEL, resolve_preset

# Hub models the course suggests on a GPU, largest first.
GPU_CANDIDATES = ("google/gemma-2-9b-it", "google/gemma-2-2b-it")
# Weights take this share of GPU memory at most; the rest is CUDA context, KV cache, activations.
GPU_WEIGHTS_SHARE = 0.8

# Below this much RAM the notebooks take their light path (Binder gives 1-2 GB).
SMALL_MEMORY_GB = 4.0

#: Colab's own packages: installing the kit or an extra there must never replace them (pip is given
#: their installed versions as constraints, so it fails instead). The set-up cell lists them too.
COLAB_PACKAGES = ("torch", "transformers", "huggingface-hub", "tokenizers", "numpy", "ipywidgets")

#: What a notebook may ask :func:`install_extras` for, and the pip packages each one is. OpenVINO
#: here is the runtime only: optimum-intel (the exporter) accepts no transformers 5 release.
EXTRAS = {
    "openvino": ("openvino", "openvino-genai", "openvino-tokenizers"),
    "bnb": ("bitsandbytes",),
}

@dataclass(frozen=True)
class Environment:
    """What :func:`setup` found, and the model and precision it suggests for this machine."""

    place: str  # "colab", "binder" or "local"
    cpu_count: int
    memory_gb: float  # RAM this kernel may use: the machine's, or a container's limit if lower
    gpu: str | None  # name of CUDA device 0, if any
    compute_capability: tuple[int, int] | None
    gpu_memory_gb: float | None
    has_token: bool  # an HF token is configured (never shown)
    suggested_model: str = "bundled"
    suggested_precision: str = "bf16"
    reason: str = ""  # why the suggestion, in a sentence

    def __str__(self) -> str:
        if self.gpu:
            major, minor = self.compute_capability or (0, 0)
            gpu = f"{self.gpu} ({self.gpu_memory_gb or 0:.0f} GB, compute capability {major}.{minor})"
        else:
            gpu = "no GPU"
        return (f"{self.place}: {self.cpu_count} CPU cores, {self.memory_gb:.1f} GB RAM, {gpu}, "
                f"HF token {'set' if self.has_token else 'not set'}")

    @property
    def small_memory(self) -> bool:
        """Under :data:`SMALL_MEMORY_GB` (Binder's 1-2 GB): notebooks skip their most memory-hungry rows."""
        return self.memory_gb < SMALL_MEMORY_GB

    @property
    def suggestion(self) -> str:
        """The suggestion as a sentence for learners."""
        return f"Suggested: {self.suggested_model} in {self.suggested_precision} ({self.reason})"


def where() -> str:
    """``colab``, ``binder`` or ``local``."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("BINDER_LAUNCH_HOST") or os.environ.get("BINDER_REQUEST"):
        return "binder"
    return "local"


def _colab_setup() -> None:
    """Enable third-party widgets and take ``HF_TOKEN`` from Colab's secrets (never shown)."""
    from google.colab import output  # only on Colab

    output.enable_custom_widget_manager()
    if os.environ.get("HF_TOKEN"):
        return
    try:
        from google.colab import userdata  # only on Colab

        token = userdata.get("HF_TOKEN")
    except Exception:  # no such secret, or this notebook was not granted access to it
        return
    if token:
        os.environ["HF_TOKEN"] = token


def quiet() -> None:
    """Keep library warnings and logs that teach nothing out of learners' output."""
    transformers.logging.set_verbosity_error()
    # torch's profiler (kineto) prints "USDT: ... profiler_start" / "profiler_stop" on stderr at its top
    # level (5); 6 mutes its log when it starts. The profiler's results are unchanged.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a float16-cast notice per matmul
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # an OpenVINO export traces


def _hub_model_reachable(repo: str) -> bool:
    """True if ``repo`` is in the local hub cache, or the hub may be asked for it."""
    return not constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo, "config.json"), str)


def suggest(gpu_memory_gb: float | None, compute_capability: tuple[int, int] | None,
            has_token: bool) -> tuple[str, str, str]:
    """``(model, precision, reason)`` for a machine; precisions come from ``auto_precision``."""
    hardware = (Hardware(compute_capability, int(gpu_memory_gb * 1e9), usable_cores()) if gpu_memory_gb
                else Hardware(None, psutil.virtual_memory().available, usable_cores()))
    chosen = os.environ.get(ENV_MODEL)
    if chosen:
        preset = resolve_preset(chosen)
        return preset.name, auto_precision(preset, hardware), f"${ENV_MODEL} is set"
    bundled = resolve_preset("bundled")
    if not gpu_memory_gb:
        return "bundled", auto_precision(bundled, hardware), "no GPU: the offline Gemma 3 270M runs on any CPU"
    if not has_token:
        return ("bundled", auto_precision(bundled, hardware),
                "Gemma 2 on the hub is gated: add an HF_TOKEN (a Colab secret) to get a Gemma 2 suggestion")
    major, minor = compute_capability or (0, 0)
    native = "native bf16" if major >= 8 else "no native bf16"
    for name in GPU_CANDIDATES:
        preset = resolve_preset(name)
        precision = auto_precision(preset, hardware)
        weights_gb = preset.weights_bytes(PRECISIONS[precision].bytes_per_param) / 1e9
        if weights_gb <= GPU_WEIGHTS_SHARE * gpu_memory_gb and _hub_model_reachable(name):
            return name, precision, (f"{weights_gb:.1f} GB of {precision} weights fit the GPU's "
                                     f"{gpu_memory_gb:.0f} GB; compute capability {major}.{minor}: {native}")
    return ("bundled", auto_precision(bundled, hardware),
            f"no Gemma 2 preset fits {gpu_memory_gb:.0f} GB of GPU memory here (or the hub is offline)")


def describe() -> Environment:
    """The machine at hand and the suggested model, without changing anything."""
    gpu = cc = gpu_gb = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        cc = torch.cuda.get_device_capability(0)
        gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    has_token = bool(get_token())
    model, precision, reason = suggest(gpu_gb, cc, has_token)
    return Environment(where(), usable_cores(), memory_limit_bytes() / 1e9, gpu, cc, gpu_gb,
                       has_token, model, precision, reason)


def colab_constraints() -> list[str]:
    """``name==version`` for each of :data:`COLAB_PACKAGES` that is installed: pip's constraints."""
    pins = []
    for name in COLAB_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def pip_install(packages: list[str], timeout: float = 900) -> str | None:
    """``pip install`` ``packages`` without replacing Colab's own packages; None, or why it failed."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(colab_constraints()) + "\n")
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", handle.name, *packages],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"pip did not finish within {timeout:.0f} s"
    finally:
        os.unlink(handle.name)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        return (lines[0] if lines else done.stderr.strip()[-300:]) or f"pip exited with {done.returncode}"
    return None


def install_extras(*extras: str) -> dict[str, str | None]:
    """Make the optional packages a notebook needs available; print one line per extra.

    On Colab they are pip-installed beside Colab's own packages (never replacing them); locally
    and on Binder ``requirements.txt`` installed them already, so nothing is installed. Returns each
    extra with None (ready) or why it is not; the notebook goes on either way.
    """
    status: dict[str, str | None] = {}
    for extra in extras:
        if extra not in EXTRAS:
            raise ValueError(f"Unknown extra {extra!r}: choose from {', '.join(EXTRAS)}.")
        packages = EXTRAS[extra]
        modules = [name.replace("-", "_") for name in packages]
        missing = [p for p, m in zip(packages, modules, strict=True) if not installed(m)]
        reason = pip_install(missing) if missing and where() == "colab" else None
        importlib.invalidate_caches()
        still = [p for p, m in zip(packages, modules, strict=True) if not installed(m)]
        if still and not reason:
            reason = f"{', '.join(still)} not installed (pip install {' '.join(still)})"
        status[extra] = reason
        print(f"{extra}: {'ready' if reason is None else 'not available: ' + reason}")
    return status


def can_run(precision: str, model: str | None = None) -> bool:
    """True if ``precision`` can load ``model`` here; otherwise print why, for a cell to skip itself."""
    reason = PRECISIONS[precision].unavailable_reason(resolve_preset(model))
    if reason:
        print(f"Skipped here: {precision} is not available ({reason}).")
    return reason is None


def setup() -> Environment:
    """Prepare this kernel for the course, print what it runs on and what it suggests."""
    if where() == "colab":
        _colab_setup()
    quiet()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    env = describe()
    print(env, f"(Python {platform.python_version()})")
    print(env.suggestion)
    return env
