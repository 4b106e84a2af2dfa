"""Keep the calling thread's alternate signal stack as it was around a library call.

Why (issue 24, traced with gdb on this repository's suite): OpenVINO's CPU plugin calls
``sigaltstack`` on the calling thread when it compiles a model and again when a compiled model
is destroyed. After a few compilations and destructions out of order, the thread's alternate
signal stack points at memory the plugin has freed. Python installs its signal handlers with
``SA_ONSTACK``, so the next signal with a Python handler -- the ``SIGCHLD`` handler PyTorch's
DataLoader installs, run when any child exits (a DataLoader worker, ``git``, any subprocess) --
cannot be delivered: the kernel kills the process with ``SIGSEGV`` (``si_code`` SI_KERNEL, in
``waitpid``), before faulthandler can print anything. ``keep_signal_stack()`` saves the stack
before the call and puts it back after, so the process's stack stays its own.
"""

from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager


class _Stack(ctypes.Structure):  # stack_t (Linux: void *ss_sp; int ss_flags; size_t ss_size)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to ask
        return None


_LIBC = _libc()


def current() -> tuple[int | None, int, int]:
    """(ss_sp, ss_flags, ss_size) of the calling thread's alternate signal stack."""
    ss = _Stack()
    if _LIBC is None or _LIBC.sigaltstack(None, ctypes.byref(ss)) != 0:
        return (None, 0, 0)
    return (ss.ss_sp, ss.ss_flags, ss.ss_size)


@contextmanager
def keep_signal_stack():
    """Run the body, then restore the calling thread's alternate signal stack to what it was
    before (a no-op off Linux)."""
    if _LIBC is None:
        yield
        return
    old = _Stack()
    saved = _LIBC.sigaltstack(None, ctypes.byref(old)) == 0
    try:
        yield
    finally:
        if saved:
            _LIBC.sigaltstack(ctypes.byref(old), None)
