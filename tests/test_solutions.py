"""Every exercise solution in ``notebooks/solutions/`` runs, so none rots.

A solution is a self-contained script (a learner brings it into the notebook with
``%load solutions/<name>.py``): it loads what it needs, on ``$GEMMA_MODEL`` (the bundled model by
default), and shows its answer with :func:`gemma_widgets.course.check` or a print.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_widgets import course

SOLUTIONS = sorted((Path(__file__).resolve().parents[1] / "notebooks" / "solutions").glob("*.py"))
TIMEOUT_S = 300  # a solution takes seconds to a minute on the bundled model


def test_check_prints_a_tick_or_fails_the_cell():
    assert doctest.testmod(course).failed == 0


@pytest.mark.integration
@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_a_solution_runs_and_shows_its_answer(path):
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=TIMEOUT_S,
                          cwd=path.parent.parent, env={**os.environ, "PYTHONPATH": str(path.parents[2])})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), f"{path.name} printed nothing: a solution shows its answer"
