"""Every tensor a notebook builds goes where the model is.

On a CPU a tensor left on the CPU works by accident; on a GPU, ``model.generate`` raises. So every
statement in a notebook that makes a tensor (``return_tensors=``, ``torch.tensor(...)``...) must
place it: ``.to(<model>.device)`` or ``device=``. A static check, because on this machine's CPU
the model and a forgotten tensor are on the same device and no run can tell them apart.
"""

from __future__ import annotations

import ast
import re

import nbformat
import pytest
from test_notebooks import NOTEBOOKS

MAKES_A_TENSOR = re.compile(r"return_tensors\s*=|torch\.(tensor|ones|zeros|full|arange|randn?)\(")


def unplaced_tensors(source: str) -> list[str]:
    """The statements in ``source`` that make a tensor without saying which device it goes to."""
    lines = source.splitlines()
    source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Assign, ast.Expr, ast.Return, ast.AugAssign, ast.AnnAssign)):
            text = ast.get_source_segment(source, node) or ""
            if MAKES_A_TENSOR.search(text) and ".to(" not in text and "device" not in text:
                found.append(text.splitlines()[0])
    return found


def test_the_check_catches_a_prompt_left_on_the_cpu():
    cell = 'prompt = tokenizer("Hi", return_tensors="pt")\nout = model.generate(**prompt)'
    assert unplaced_tensors(cell) == ['prompt = tokenizer("Hi", return_tensors="pt")']
    assert unplaced_tensors('prompt = tokenizer("Hi", return_tensors="pt").to(model.device)') == []
    assert unplaced_tensors("ids = torch.tensor([ids], device=lm.model.device)") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_tensor_a_notebook_makes_goes_to_the_models_device(path):
    nb = nbformat.read(path, as_version=4)
    unplaced = [(i, line) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
                for line in unplaced_tensors(cell.source)]
    assert not unplaced, f"tensors made without a device (cell index, statement): {unplaced}"
