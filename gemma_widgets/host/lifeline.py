"""Child processes that die with the process that started them (a benchmark worker, a llama.cpp server).

A child the kit starts must never outlive it: a worker left behind by a killed ``bench`` or a
dead notebook kernel kept decoding at 100% CPU under PID 1, and a server kept its port. Two
guards, both set up by :func:`hold` at the start of the child:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the child when its parent
  ends, however it ends (SIGKILL included), even while the child runs native code. Linux sends
  it when the parent *thread* that started the child ends, so start a long-lived child from a
  thread that lives as long as it (a notebook cell and a script run in the main thread);
* everywhere, a pipe only the parent holds open: a thread of the child waits on it and ends
  the child when it reads end-of-file, which the OS gives when the parent has gone.

The parent may die before the child gets to :func:`hold`: the child then finds a different
parent process id and ends at once. :func:`popen` starts a child with the pipe; a child that is
another program's module runs through this one: ``python -m gemma_widgets.host.lifeline MODULE ARGS``.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

#: The variable that tells a child its parent's process id and the pipe to watch (``pid:fd``).
ENVIRONMENT_VARIABLE = "GEMMA_WIDGETS_LIFELINE"

#: The exit status of a child that ended because its parent had gone.
ORPHANED_EXIT = 70

#: ``prctl``'s option that sets the signal the kernel sends a process when its parent ends (``linux/prctl.h``).
PR_SET_PDEATHSIG = 1


def popen(command: Sequence[str], **options: Any) -> subprocess.Popen:
    """``subprocess.Popen(command, **options)`` for a child that calls :func:`hold`: it gets the read end
    of a pipe whose write end this process keeps (closed when the returned object is collected)."""
    read_end, write_end = os.pipe()  # both close on exec here: only the child gets the read end
    env = options.pop("env", None)
    env = dict(os.environ if env is None else env)
    env[ENVIRONMENT_VARIABLE] = f"{os.getpid()}:{read_end}"
    try:
        process = subprocess.Popen(command, env=env, pass_fds=(*options.pop("pass_fds", ()), read_end), **options)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    weakref.finalize(process, os.close, write_end)
    return process


def _die_with_parent_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent ends; False where it cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(fd: int) -> None:
    """End this process when the pipe from the parent reaches end-of-file (the parent is gone)."""
    try:
        while os.read(fd, 4096):  # the parent never writes: data would only be noise
            pass
    except OSError:  # not the pipe we were given: nothing to watch
        return
    os._exit(ORPHANED_EXIT)


def hold() -> None:
    """In a child started by :func:`popen`: die with the parent (see the module docstring). A no-op in a
    process started some other way. Call it first, before the child does anything that takes time."""
    spec = os.environ.pop(ENVIRONMENT_VARIABLE, None)  # popped: the child's own children are not ours
    if not spec:
        return
    try:
        parent, fd = (int(part) for part in spec.split(":"))
    except ValueError:  # not written by popen()
        return
    _die_with_parent_signal()
    if os.getppid() != parent:  # the parent died before the signal was set: nobody would send it
        os._exit(ORPHANED_EXIT)
    os.set_inheritable(fd, False)
    threading.Thread(target=_watch, args=(fd,), daemon=True, name="gemma-widgets-lifeline").start()


def main(argv: Sequence[str]) -> None:
    """``python -m gemma_widgets.host.lifeline MODULE ARGS...``: :func:`hold`, then run MODULE as ``__main__``."""
    if not argv:
        raise SystemExit("usage: python -m gemma_widgets.host.lifeline MODULE [ARGS...]")
    hold()
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
