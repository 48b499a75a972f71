"""A variant's recipe: which weights it keeps at which precision, read from the loaded weights.

Two int4 variants can differ in everything that matters for quality (is the 262k-row output
layer int4 or int8? are the most sensitive layers kept in int8?); the dashboard shows each
variant's recipe so a learner sees why. Every engine describes its weights as
``(part, layer kind, precision)`` rows, where ``part`` is ``embedding``, ``output`` or ``body``:

>>> describe([("embedding", "embed_tokens", "int8"), ("output", "lm_head", "int8")]
...          + [("body", "mlp.down_proj", "int4")] * 18 + [("body", "self_attn.q_proj", "int8")] * 18)
'embedding int8, output int8; body: 18 int4, 18 int8 (self_attn.q_proj)'
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: OpenVINO element types and torch dtypes, by the names the course uses.
PRECISION_NAMES = {"u4": "int4", "i4": "int4", "u8": "int8", "i8": "int8", "nf4": "nf4", "f16": "fp16",
                   "bf16": "bf16", "f32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float32": "fp32",
                   "int8": "int8", "uint8": "int8"}


def describe(rows: Iterable[tuple[str, str, str]]) -> str:
    """One line from ``(part, kind, precision)`` rows: embedding and output, then the body's counts
    (the layer kinds named for every precision but the most common one)."""
    rows = list(rows)
    parts = []
    for part in ("embedding", "output"):
        found = sorted({precision for p, _, precision in rows if p == part})
        if found:
            parts.append(f"{part} {'/'.join(found)}")
    if parts and not any(p == "output" for p, _, _ in rows):
        parts[0] += " (also the output layer)"
    body = Counter(precision for part, _, precision in rows if part == "body")
    if body:
        common = body.most_common(1)[0][0]
        pieces = []
        for precision, count in body.most_common():
            kinds = sorted({kind for part, kind, p in rows if part == "body" and p == precision})
            named = f" ({', '.join(kinds)})" if precision != common and len(body) > 1 else ""
            pieces.append(f"{count} {precision}{named}")
        parts.append("body: " + ", ".join(pieces))
    return ", ".join(parts[:-1]) + ("; " if len(parts) > 1 else "") + parts[-1] if parts else ""


def _kind(name: str) -> str:
    """``model.layers.3.mlp.down_proj`` (and OpenVINO's friendly names) -> ``mlp.down_proj``."""
    name = re.sub(r"^.*layers\.\d+\.", "", name.replace("__module.", ""))
    return re.sub(r"(\.weight)?(/.*)?$", "", name)


def _part(kind: str, op_or_module: str) -> str:
    if "embed" in kind or op_or_module in ("Gather", "Embedding"):
        return "embedding"
    return "output" if "lm_head" in kind else "body"


def torch_rows(model: Any) -> list[tuple[str, str, str]]:
    """Rows for a transformers model: each ``Linear`` (bitsandbytes' included) and the embedding."""
    rows = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        kind_of_module = type(module).__name__
        if weight is None or not (kind_of_module.startswith("Linear") or kind_of_module.endswith("Embedding")):
            continue
        if kind_of_module == "Linear4bit":
            precision = getattr(weight, "quant_type", None) or "int4"
        else:
            precision = PRECISION_NAMES.get(str(weight.dtype).removeprefix("torch."), str(weight.dtype))
        kind = _kind(name)
        rows.append((_part(kind, "Embedding" if kind_of_module.endswith("Embedding") else ""), kind, precision))
    return rows


_COMPRESSED = {"u4", "i4", "u8", "i8", "nf4", "f4e2m1", "u2"}
_DECOMPRESSION_OPS = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}


def _weight_type(node: Any) -> str | None:
    """The element type of the largest constant behind ``node`` through a decompression subgraph
    (None where there is no layer weight behind it)."""
    best: tuple[int, str] | None = None
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.get_type_name() == "Constant":
            size = 1
            for dim in node.get_output_shape(0):
                size *= dim
            if best is None or size > best[0]:
                best = (size, node.get_element_type().get_type_name())
        elif node.get_type_name() in _DECOMPRESSION_OPS:
            stack += [i.get_source_output().get_node() for i in node.inputs()]
    if best is None or (best[0] < 4096 and best[1] not in _COMPRESSED):
        return None  # a small float constant (rotary frequencies), not a layer's weights
    return best[1]


def openvino_rows(folder: str | Path) -> list[tuple[str, str, str]]:
    """Rows for an OpenVINO IR: the weight of every ``MatMul`` and ``Gather`` with constant weights."""
    import openvino as ov  # optional: the OpenVINO packages

    model = ov.Core().read_model(Path(folder) / "openvino_model.xml")
    rows = []
    for op in model.get_ordered_ops():
        op_type = op.get_type_name()
        if op_type not in ("MatMul", "Gather"):
            continue
        element = _weight_type(op.input(1 if op_type == "MatMul" else 0).get_source_output().get_node())
        if element is None:
            continue
        kind = _kind(op.get_friendly_name())
        rows.append((_part(kind, op_type), kind, PRECISION_NAMES.get(element, element)))
    return rows


def nncf_settings(folder: str | Path) -> str:
    """How nncf compressed the IR (``int4_asym g64, awq, scale estimation``), "" if it did not."""
    import openvino as ov  # optional: the OpenVINO packages

    model = ov.Core().read_model(Path(folder) / "openvino_model.xml")

    def read(key: str) -> str | None:
        path = ["nncf", "weight_compression", key]
        return model.get_rt_info(path).astype(str) if model.has_rt_info(path) else None

    mode = read("mode")
    if mode is None:
        return ""
    words = [mode]
    if (group := read("group_size")) not in (None, "-1"):
        words[0] += f" g{group}"
    if (ratio := read("ratio")) not in (None, "1.0", "1"):
        words.append(f"ratio {ratio}")
    words += [flag.replace("_", " ") for flag in ("awq", "scale_estimation", "gptq", "all_layers")
              if read(flag) == "True"]
    return ", ".join(words)


#: ggml's tensor types (``ggml.h``) by number, the ones GGUF files of this size use.
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K", 11: "Q3_K",
              12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_rows(path: str | Path) -> list[tuple[str, str, str]]:
    """Rows for a GGUF file, read from its header (the tensor infos after the key-value pairs)."""
    with open(path, "rb") as fh:
        def take(fmt: str) -> Any:
            return struct.unpack("<" + fmt, fh.read(struct.calcsize("<" + fmt)))[0]

        def string() -> str:
            return fh.read(take("Q")).decode("utf-8", "replace")

        def skip(value_type: int) -> None:
            if value_type == 8:
                fh.seek(take("Q"), 1)
            elif value_type == 9:
                item_type, count = take("I"), take("Q")
                if item_type in _GGUF_SCALARS:
                    fh.seek(count * struct.calcsize(_GGUF_SCALARS[item_type]), 1)
                else:
                    for _ in range(count):
                        skip(item_type)
            else:
                fh.seek(struct.calcsize(_GGUF_SCALARS[value_type]), 1)

        if fh.read(4) != b"GGUF" or take("I") < 2:
            raise ValueError(f"{path} is not a GGUF file of version 2 or later")
        n_tensors, n_kv = take("Q"), take("Q")
        for _ in range(n_kv):
            string()
            skip(take("I"))
        rows = []
        for _ in range(n_tensors):
            name, dims = string(), take("I")
            fh.seek(8 * dims, 1)
            ggml_type = take("I")
            fh.seek(8, 1)
            if dims < 2:
                continue  # norms and biases
            kind = re.sub(r"^blk\.\d+\.|\.weight$", "", name)
            part = "embedding" if kind == "token_embd" else "output" if kind == "output" else "body"
            rows.append((part, kind, GGML_TYPES.get(ggml_type, f"type {ggml_type}")))
    return rows
