"""Every exercise solution in ``notebooks/solutions/`` runs, so none rots.

A solution is a self-contained script (a learner brings it into the notebook with
``%load solutions/<name>.py``): it loads what it needs, on ``$GEMMA_MODEL`` (the bundled model by
default), and shows its answer with :func:`gemma_widgets.course.check` or a print.

It runs in the notebook's kernel, beside what the lesson still holds there, so each one runs here
after :data:`LESSON` loads that, under the limit conftest.py holds the notebooks to (Binder's 2 GB,
``MEM_LIMIT`` set, the process tree's anonymous memory watched by ``benchmarks/notebook_memory.py``).
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_widgets import course

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]
from notebook_memory import MB, TreeWatcher  # noqa: E402

SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("*.py"))
TIMEOUT_S = 300  # a solution takes seconds to a minute on the bundled model
BINDER_LIMIT_MB = int(os.environ.get("NOTEBOOK_MEMORY_LIMIT_MB", "2048"))  # as conftest.py reads it

#: What each notebook's kernel still holds when its exercises come, under the notebook's own names
#: (a solution may reuse it). 01, 05 and 07 free their models before; 07 measures in subprocesses.
LESSON = {
    "02": "from gemma_widgets import load_model\nlm = load_model()\n",
    "03": "from gemma_widgets import load_model\nlm = load_model(MODEL, 'bf16')\n",
    "04": ("from gemma_widgets import PrecisionArena\nfrom gemma_widgets.course.environment import can_run\n"
           "models = ['bf16', 'ov-int4'] if can_run('ov-int4-optimum', MODEL) else ['bf16', 'bnb-nf4'] "
           "if can_run('bnb-nf4', MODEL) else ['fp32', 'bf16']\n"
           "arena = PrecisionArena(models=models, model=MODEL)\n"),
    "06": ("from gemma_widgets import ChatPanel\nfrom gemma_widgets import SamplingSettings\n"
           "panel = ChatPanel(model=MODEL, precision='bf16', settings=SamplingSettings(temperature=0, "
           "max_new_tokens=24))\n"),
}


def test_check_prints_a_tick_or_fails_the_cell():
    assert doctest.testmod(course).failed == 0


@pytest.mark.integration
@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_a_solution_runs_beside_the_lessons_model_and_shows_its_answer(path):
    lesson = LESSON.get(path.name[:2], "")
    script = (f"import os\nMODEL = os.environ.get('GEMMA_MODEL', 'bundled')\n{lesson}"
              f"print('{_READY}', flush=True)\nexec(compile(open({str(path)!r}).read(), {path.name!r}, 'exec'))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if BINDER_LIMIT_MB:
        env["MEM_LIMIT"] = str(BINDER_LIMIT_MB * MB)  # as the notebooks' kernels: setup() takes Binder's path
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=path.parent.parent, env=env)
    watcher = TreeWatcher(process.pid, interval=0.2).start()
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
        watcher.stop()
    assert process.returncode == 0, err[-3000:]
    answer = out.split(_READY, 1)[1]
    assert answer.strip(), f"{path.name} printed nothing: a solution shows its answer"
    anon = watcher.peak_anon / MB
    print(f"{path.name} beside notebook {path.name[:2]}'s model: {anon:.0f} MB anonymous, "
          f"{watcher.peak / MB:.0f} MB PSS at the peak")
    assert not BINDER_LIMIT_MB or anon <= BINDER_LIMIT_MB, (
        f"{path.name} beside notebook {path.name[:2]}'s model peaked at {anon:.0f} MB of anonymous memory: "
        f"over Binder's {BINDER_LIMIT_MB} MB")


_READY = "-- the lesson model is loaded --"
