"""Where a notebook runs (local, Binder, Colab) and what that machine can do.

Every notebook's first code cell calls :func:`setup`, which makes the three places alike:
on Colab it enables the custom widget manager and reads ``HF_TOKEN`` from Colab's secrets;
everywhere it quiets library chatter and reports the hardware and the suggested model.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import warnings
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Environment:
    """What :func:`setup` found."""

    place: str  # "colab", "binder" or "local"
    cpu_count: int
    memory_gb: float
    gpu: str | None  # name of CUDA device 0, if any
    compute_capability: tuple[int, int] | None
    has_token: bool  # an HF token is configured (never shown)

    def __str__(self) -> str:
        gpu = f"{self.gpu} (compute capability {self.compute_capability})" if self.gpu else "no GPU"
        return (f"{self.place}: {self.cpu_count} CPU cores, {self.memory_gb:.0f} GB RAM, {gpu}, "
                f"HF token {'set' if self.has_token else 'not set'}")


def where() -> str:
    """``colab``, ``binder`` or ``local``."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("BINDER_LAUNCH_HOST") or os.environ.get("BINDER_REQUEST"):
        return "binder"
    return "local"


def _colab_setup() -> None:
    from google.colab import output  # type: ignore[import-not-found]

    output.enable_custom_widget_manager()
    if not os.environ.get("HF_TOKEN"):
        try:
            from google.colab import userdata  # type: ignore[import-not-found]

            os.environ["HF_TOKEN"] = userdata.get("HF_TOKEN")
        except Exception:  # no such secret, or notebook access not granted
            pass


def quiet() -> None:
    """Keep library warnings and logs that teach nothing out of learners' output."""
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def describe() -> Environment:
    """The machine at hand, without changing anything."""
    import torch
    from huggingface_hub import get_token

    gpu = cc = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        cc = torch.cuda.get_device_capability(0)
    return Environment(where(), psutil.cpu_count() or 1, psutil.virtual_memory().total / 1e9,
                       gpu, cc, bool(get_token()))


def setup() -> Environment:
    """Prepare this kernel for the course and return what it runs on."""
    place = where()
    if place == "colab":
        _colab_setup()
    quiet()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    env = describe()
    print(env, f"(Python {platform.python_version()})")
    return env
