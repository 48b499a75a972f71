"""The course pictures of notebooks 04-06 and the weight round trip behind 04's: fast, no model."""

from __future__ import annotations

import pytest
import torch

from gemma_widgets.course import pictures, weight_error

PNG = b"\x89PNG\r\n\x1a\n"


def test_error_vs_bits_png_draws_every_point():
    png = pictures.error_vs_bits_png({"int8 per row": (8.03, 0.008), "nf4 $64": (4.5, 0.09)})
    assert png.startswith(PNG)
    assert pictures.error_vs_bits_png({}).startswith(PNG)  # nothing measured: an empty chart, not an error


def test_compile_png_and_timeline_png():
    per_repeat = {"eager": [12.0, 11.5], "compiled": [13.5, 14.0]}  # tokens/s of each timed repeat
    assert pictures.compile_png(per_repeat, {"eager": 0.5, "compiled": 95.0}).startswith(PNG)
    assert pictures.timeline_png([0.3, 0.35, 0.41], [2, 9, 15], first_s=0.3).startswith(PNG)
    assert pictures.timeline_png([], []).startswith(PNG)



def test_cache_layers_png_draws_the_tiny_models_layout_beside_gemma_2_9b():
    tiny = [(16, True), (1024, False)]  # tiny-random-gemma2's static cache at 1024 slots
    nine_b = [(4096, True), (8192, False)] * 21
    png = pictures.cache_layers_png({"tiny-random-gemma2": tiny, "Gemma 2 9B": nine_b})
    assert png.startswith(PNG) and len(png) < 40_000  # small enough for a stored output
    assert pictures.cache_layers_png({"global only": [(64, False)]}).startswith(PNG)  # nothing saved: no error
    assert pictures.cache_layers_png({}).startswith(PNG) and pictures.cache_layers_png({"none": []}).startswith(PNG)

def test_roundtrip_costs_and_errors_are_ordered():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    sym, asym = weight_error.roundtrip(w, 4, 64, sym=True), weight_error.roundtrip(w, 4, 64, sym=False)
    assert (sym.bits_per_weight, asym.bits_per_weight) == (4 + 16 / 64, 4 + 20 / 64)
    assert asym.error < sym.error
    assert weight_error.roundtrip(w, 4, 32).error < weight_error.roundtrip(w, 4, -1).error
    assert weight_error.roundtrip(w, 8, -1, sym=True).error < asym.error
    with pytest.raises(ValueError, match="groups of 48"):
        weight_error.roundtrip(w, 4, 48)


def test_nf4_roundtrip_matches_bitsandbytes_where_it_runs():
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    ours = weight_error.nf4_roundtrip(w)
    assert ours.bits_per_weight == 4.5 and weight_error.nf4_roundtrip(w, double_quant=True).bits_per_weight < 4.2
    levels = torch.tensor(weight_error.NF4_LEVELS)
    assert weight_error.nf4_roundtrip(levels.repeat(4)).error < 1e-6  # NF4's own levels come back exactly
    functional = pytest.importorskip("bitsandbytes.functional")
    try:
        q, state = functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
        theirs = functional.dequantize_4bit(q, state)
    except (RuntimeError, NotImplementedError) as exc:  # a build without CPU kernels
        pytest.skip(f"bitsandbytes cannot quantize here: {exc}")
    assert float((theirs - w).norm() / w.norm()) == pytest.approx(ours.error, rel=1e-4)


@pytest.mark.integration
def test_prepare_compile_fills_the_inductor_cache(tmp_path):
    """``prepare --compile`` (Binder's postBuild) leaves compiled kernels where the notebooks look."""
    import os
    import subprocess
    import sys

    from gemma_widgets.compilation import compile_unavailable_reason

    if compile_unavailable_reason("cpu"):
        pytest.skip(compile_unavailable_reason("cpu"))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-m", "gemma_widgets", "prepare", "--model", "tiny-random-gemma2",
                           "--compile"], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled notebook 05" in done.stdout and "compiled load_model(compile=True)" in done.stdout
    assert f"inductor cache: {tmp_path / 'inductor'}" in done.stdout
    assert any(p.is_file() for p in (tmp_path / "inductor").rglob("*")), "kernels were written"
    again = subprocess.run([sys.executable, "-m", "gemma_widgets", "prepare", "--model", "tiny-random-gemma2",
                            "--compile"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, "a warmed cache is not warmed twice"
