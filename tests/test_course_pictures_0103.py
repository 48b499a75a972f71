"""The course's pictures for notebooks 02 and 03: the format table matches torch, and both draw a PNG."""

from __future__ import annotations

import pytest

from gemma_widgets.course import pictures

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", pictures.FLOAT_FORMATS)
def test_the_float_format_table_is_torchs(name):
    torch = pytest.importorskip("torch")
    sign, exponent, mantissa, smallest, largest = pictures.FLOAT_FORMATS[name]
    info = torch.finfo({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name])
    assert sign + exponent + mantissa == info.bits
    assert smallest == info.smallest_normal and largest == info.max


def test_the_float_formats_picture_is_a_png():
    assert pictures.float_formats_png((12.5, 1.2e5), "a $model").startswith(PNG)


def test_the_chat_picture_is_a_png_and_wraps_at_newlines():
    tokens = ["<bos>", "<start_of_turn>", "user", "\n", "Hi", "$", "<end_of_turn>", "\n"]
    assert pictures.chat_tokens_png(tokens, [t.startswith("<") for t in tokens]).startswith(PNG)
    with pytest.raises(ValueError):
        pictures.chat_tokens_png(tokens, [True])  # one flag per token
