"""A peft LoRA adapter as a llama.cpp LoRA adapter GGUF, so llama.cpp runs the fine-tuned model.

llama.cpp applies a LoRA at run time, beside the base weights (``Llama(..., lora_path=...)``, the
server's ``--lora_path``): every targeted matrix computes ``W x + scale * B (A x)`` with
``scale = adapter.lora.alpha / rank``, which is peft's own ``lora_alpha / r``. The base file keeps its
quantized weights untouched (the package's Q4_K_M GGUF), and the adapter stays in float32.

The file is what llama.cpp's ``convert_lora_to_gguf.py`` writes for a peft adapter:

* metadata ``general.architecture`` (the base file's, ``gemma3`` here), ``general.type = "adapter"``,
  ``adapter.type = "lora"`` and ``adapter.lora.alpha``;
* for every targeted projection, two tensors named after the base tensor, ``blk.N.attn_q.weight.lora_a``
  and ``.lora_b``: peft's ``lora_A.weight`` (torch shape ``[r, in]``) and ``lora_B.weight`` (``[out, r]``)
  unchanged, which GGUF records as ``ne = [in, r]`` and ``[r, out]`` (llama.cpp checks that ``a.ne[0]``
  and ``b.ne[1]`` are the base tensor's ``ne[0]`` and ``ne[1]``, and ``a.ne[1] == b.ne[0]``);
* names mapped by gguf-py's own table (``model.layers.N.self_attn.q_proj`` -> ``blk.N.attn_q``). Gemma 3's
  converter transforms no projection (no q/k permutation, which is Llama's; its ``+1`` applies to norm
  weights, which a LoRA does not target), so the factors need no transform either.

Built once into the kit's cache, keyed on the sha256 of the adapter's files and on the base file, and
checked against the base file's tensor shapes first, so an adapter for another model is a clear error
here instead of llama.cpp's ``Failed to initialize LoRA adapter``.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import gguf
import torch
from safetensors.torch import load_file

from gemma_widgets.cache import build_once, cache_root, file_digest
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.offline.bundled import bundled_gguf, chat_adapter_dir

#: Raise when :func:`write_lora_gguf` changes what it writes: older cached files are then rebuilt.
FORMAT_VERSION = 1

#: The file's name inside its cache folder.
FILE_NAME = "lora-adapter-f32.gguf"

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"

#: A peft LoRA factor of one decoder layer's projection (a causal LM, or a multimodal model's language part).
_FACTOR = re.compile(r"^base_model\.model\.(?:model\.language_model\.|language_model\.model\.|model\.)?"
                     r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def adapter_digest(adapter_dir: Path) -> str:
    """sha256 of the adapter's config and weights (every byte: the weights are a few MB)."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        digest.update(name.encode() + b"\0")
        with open(Path(adapter_dir) / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's config, refused where llama.cpp's LoRA cannot express it."""
    try:
        config = json.loads((adapter_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GemmaWidgetsError(f"Cannot read the LoRA adapter's {CONFIG} in {adapter_dir}: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise GemmaWidgetsError(f"{adapter_dir} is not a peft LoRA adapter (peft_type must be 'LORA').")
    unsupported = [key for key in ("use_dora", "use_rslora", "fan_in_fan_out", "lora_bias", "modules_to_save",
                                   "rank_pattern", "alpha_pattern", "layers_to_transform", "layer_replication",
                                   "trainable_token_indices", "alora_invocation_tokens")
                   if config.get(key)]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise GemmaWidgetsError(f"The LoRA adapter in {adapter_dir} uses {', '.join(unsupported)}: the kit converts "
                                "a plain LoRA (one rank and alpha for every matrix, no biases) for llama.cpp.")
    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), (int, float)):
        raise GemmaWidgetsError(f"The LoRA adapter's {CONFIG} in {adapter_dir} has no rank r or lora_alpha.")
    return config


#: GGUF's scalar value types (``gguf_type``) as ``struct`` formats; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """A GGUF file's scalar and string metadata, and its tensors' shapes (GGUF ``ne`` order), read from
    the header alone: gguf-py's ``GGUFReader`` parses the 262k-entry vocabulary too (12 s here)."""
    with open(path, "rb") as fh:
        def take(fmt: str) -> Any:
            return struct.unpack("<" + fmt, fh.read(struct.calcsize("<" + fmt)))[0]

        def string() -> str:
            return fh.read(take("Q")).decode("utf-8", "replace")

        def value(kind: int) -> Any:
            if kind == 8:
                return string()
            if kind == 9:  # arrays are skipped
                item, count = take("I"), take("Q")
                if item in _SCALARS:
                    fh.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
                else:
                    for _ in range(count):
                        value(item)
                return None
            return take(_SCALARS[kind])

        try:
            if fh.read(4) != b"GGUF" or take("I") < 2:
                raise ValueError("no GGUF magic")
            n_tensors, n_kv = take("Q"), take("Q")
            fields = {}
            for _ in range(n_kv):
                key = string()
                fields[key] = value(take("I"))
            shapes = {}
            for _ in range(n_tensors):
                name, dims = string(), take("I")
                shapes[name] = tuple(take("Q") for _ in range(dims))
                fh.seek(4 + 8, 1)  # type and offset
        except (ValueError, KeyError, struct.error) as exc:
            raise GemmaWidgetsError(f"{path} is not a GGUF file of version 2 or later ({exc}).") from exc
    return fields, shapes


def base_tensors(base_gguf: Path) -> tuple[str, int, dict[str, tuple[int, ...]]]:
    """The base file's architecture, block count and tensor shapes (GGUF ``ne`` order)."""
    fields, shapes = read_header(base_gguf)
    arch = str(fields.get("general.architecture"))
    return arch, int(fields.get(f"{arch}.block_count") or 0), shapes


def lora_mismatch(base_gguf: str | Path, lora: str | Path) -> str | None:
    """Why llama.cpp would refuse the LoRA adapter GGUF ``lora`` for ``base_gguf``, or None: the checks of
    its ``llama_adapter_lora_init``, made first because llama-cpp-python 0.3.36 misses a refusal (a NULL
    adapter is a ctypes pointer, not None) and the first decode then dies with SIGSEGV."""
    base_fields, base_shapes = read_header(Path(base_gguf))
    fields, shapes = read_header(Path(lora))
    name = Path(lora).name
    if fields.get("general.type") != "adapter" or fields.get("adapter.type") != "lora":
        return f"{name} is not a LoRA adapter GGUF (general.type 'adapter', adapter.type 'lora')"
    if fields.get("general.architecture") != base_fields.get("general.architecture"):
        return (f"{name} is an adapter for {fields.get('general.architecture')}, the model is "
                f"{base_fields.get('general.architecture')}")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor, shape in shapes.items():
        base, _, factor = tensor.rpartition(".")
        if factor in ("lora_a", "lora_b"):
            pairs.setdefault(base, {})[factor] = shape
        elif not tensor.endswith("_norm.weight"):  # llama.cpp skips norms, refuses anything else
            return f"{name} has a tensor that is no LoRA factor: {tensor}"
    for base, factors in sorted(pairs.items()):
        if len(factors) != 2:
            return f"{name} lacks one factor of {base}"
        if base not in base_shapes:
            return f"{name} adapts {base}, which the model does not have: an adapter for another model"
        a, b, weight = factors["lora_a"], factors["lora_b"], base_shapes[base]
        if base.endswith("token_embd.weight"):
            fits = weight[0] == b[1] and weight[1] == a[1]
        else:
            fits = weight[0] == a[0] and weight[1] == b[1] and a[1] == b[0]
        if not fits:
            return (f"{name} has {base} factors of shapes {list(a)} and {list(b)} for a {list(weight)} matrix: "
                    "an adapter for another model")
    return None


def _factors(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's tensors as float32 torch tensors (peft saves them in the model's dtype, often bf16)."""
    try:
        tensors = load_file(adapter_dir / WEIGHTS, device="cpu")
    except (OSError, ValueError, RuntimeError) as exc:
        raise GemmaWidgetsError(f"Cannot read the LoRA adapter's {WEIGHTS} in {adapter_dir}: {exc}") from exc
    return {name: tensor.to(torch.float32).contiguous() for name, tensor in tensors.items()}


def gguf_tensors(adapter_dir: Path, arch: str, blocks: int,
                 base_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """``{gguf name: float32 numpy array}`` of the adapter, in llama.cpp's names and orientation, checked
    against the base tensors' shapes."""
    config = _read_config(adapter_dir)
    names = gguf.get_tensor_name_map(_arch(arch), blocks)
    rank = int(config["r"])
    out: dict[str, Any] = {}
    for name, tensor in _factors(adapter_dir).items():
        match = _FACTOR.match(name)
        if match is None:
            raise GemmaWidgetsError(f"The LoRA adapter in {adapter_dir} has a tensor llama.cpp's LoRA cannot take: "
                                    f"{name} (only lora_A/lora_B of decoder layers' projections).")
        layer, block, module, which = match.groups()
        base = names.get_name(f"model.layers.{layer}.{block}.{module}.weight", try_suffixes=(".weight",))
        if base is None or base not in base_shapes:
            raise GemmaWidgetsError(f"The LoRA adapter's {name} has no matching tensor in the base GGUF "
                                    f"({base or 'no name'}): it was made for another model.")
        ne_in, ne_out = base_shapes[base][:2]
        # torch [r, in] and [out, r]; GGUF lists the same array's dimensions reversed
        expected = (rank, ne_in) if which == "A" else (ne_out, rank)
        if tuple(tensor.shape) != expected:
            raise GemmaWidgetsError(f"The LoRA adapter's {name} is {list(tensor.shape)}, the base GGUF's {base} needs "
                                    f"{list(expected)}: the adapter was made for another model (or rank).")
        out[f"{base}.lora_{which.lower()}"] = tensor.numpy()
    bases = {n.rsplit(".", 1)[0] for n in out}
    unpaired = sorted(b for b in bases if f"{b}.lora_a" not in out or f"{b}.lora_b" not in out)
    if unpaired or not out:
        raise GemmaWidgetsError(f"The LoRA adapter in {adapter_dir} lacks one factor of {unpaired or 'every tensor'}.")
    return out


def _arch(arch: str) -> Any:
    """gguf-py's ``MODEL_ARCH`` for an architecture's name (``gemma3``)."""
    for key, value in gguf.MODEL_ARCH_NAMES.items():
        if value == arch:
            return key
    raise GemmaWidgetsError(f"gguf does not know the architecture {arch!r} of the base GGUF.")


def write_lora_gguf(adapter_dir: Path, base_gguf: Path, path: Path) -> dict:
    """Write the adapter in ``adapter_dir`` as a llama.cpp LoRA GGUF at ``path`` for ``base_gguf``."""
    adapter_dir = Path(adapter_dir)
    config = _read_config(adapter_dir)
    arch, blocks, shapes = base_tensors(Path(base_gguf))
    tensors = gguf_tensors(adapter_dir, arch, blocks, shapes)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for name in sorted(tensors):
        writer.add_tensor(name, tensors[name])  # float32: ggml type F32, shape reversed into ne
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch, "rank": int(config["r"]), "alpha": float(config["lora_alpha"]),
            "tensors": len(tensors)}


def lora_gguf(adapter_dir: Path, base_gguf: Path | None = None) -> Path:
    """The peft adapter in ``adapter_dir`` as a llama.cpp LoRA GGUF for ``base_gguf`` (default: the bundled
    model's file), built once into the kit's cache; a bad adapter is a :class:`GemmaWidgetsError`."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / CONFIG).is_file() or not (adapter_dir / WEIGHTS).is_file():
        raise GemmaWidgetsError(f"No peft LoRA adapter in {adapter_dir}: it needs {CONFIG} and {WEIGHTS}.")
    if base_gguf is None:
        base_gguf = bundled_gguf()
    base_gguf = Path(base_gguf)
    key = hashlib.sha256(f"{adapter_digest(adapter_dir)}\0{file_digest(base_gguf)}".encode()).hexdigest()[:16]

    def build(out: Path) -> dict:
        info = write_lora_gguf(adapter_dir, base_gguf, out / FILE_NAME)
        return {**info, "adapter": str(adapter_dir), "base": base_gguf.name}

    return build_once(cache_root() / f"gguf-lora-{key}", build, FORMAT_VERSION) / FILE_NAME


def bundled_lora() -> Path:
    """The kit's chat adapter (:func:`gemma_widgets.offline.bundled.chat_adapter_dir`) as a llama.cpp LoRA GGUF
    for the bundled file: what makes llama.cpp run the ``bundled`` (chat) model."""
    return lora_gguf(chat_adapter_dir())
