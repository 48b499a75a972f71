"""Children started through gemma_widgets.host.lifeline die with their parent, by each guard on its own."""

from __future__ import annotations

import orphans

CHILD = """
import sys, time
from gemma_widgets.host import lifeline as _lifeline
if "--pipe-only" in sys.argv:
    _lifeline._die_with_parent_signal = lambda: False  # as on macOS: only the pipe guards
if "--no-pipe" in sys.argv:
    _lifeline._watch = lambda fd: None  # only the death signal (and the parent check) guard
if "--late" in sys.argv:
    time.sleep(2)  # the parent is gone before the child gets to hold()
_lifeline.hold()
print("held", flush=True)
time.sleep(300)
"""

PARENT = """
import subprocess, sys, time
from gemma_widgets.host import lifeline as _lifeline
child = _lifeline.popen([sys.executable, "-c", {child!r}, *{flags!r}], stdout=subprocess.PIPE, text=True)
if "--late" not in {flags!r}:
    assert child.stdout.readline() == "held\\n"
print(child.pid, flush=True)
time.sleep(300)
"""


def _child_outlives_its_killed_parent(*flags: str) -> bool:
    child = 0
    with orphans.parent_process(PARENT.format(child=CHILD, flags=list(flags))) as parent:
        try:
            line = orphans.first_line(parent, 60)
            assert line.isdigit(), f"the parent did not start its child: {line!r}"
            child = int(line)
            parent.kill()
            parent.wait(10)
            return not orphans.gone_within(child, 8)
        finally:
            if child:
                orphans.kill_if_ours(child, "_lifeline")


def test_without_the_death_signal_the_pipe_ends_the_child():
    assert not _child_outlives_its_killed_parent("--pipe-only")


def test_the_death_signal_alone_ends_the_child():
    assert not _child_outlives_its_killed_parent("--no-pipe")


def test_a_child_whose_parent_died_before_it_held_on_ends_at_once():
    """The death signal set after the parent died is never sent: the parent check must end the child."""
    assert not _child_outlives_its_killed_parent("--late", "--no-pipe")
