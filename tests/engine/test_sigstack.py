"""engine.sigstack: a library call that moves the thread's alternate signal stack (as
OpenVINO's CPU plugin does when it compiles and frees models) leaves it as it was."""

import ctypes
import os
import signal
import sys

import pytest

from hwbench.engine import sigstack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux stack_t")


def _set_stack(buf) -> None:
    ss = sigstack._Stack(ctypes.addressof(buf), 0, ctypes.sizeof(buf))
    assert sigstack._LIBC.sigaltstack(ctypes.byref(ss), None) == 0


def test_a_moved_signal_stack_is_put_back():
    before = sigstack.current()
    theirs = ctypes.create_string_buffer(256 * 1024)
    with sigstack.keep_signal_stack():
        _set_stack(theirs)  # what the plugin does
        assert sigstack.current()[0] == ctypes.addressof(theirs)
    assert sigstack.current() == before


def test_a_signal_after_the_library_freed_its_stack_is_delivered():
    """The crash of issue 24 in miniature: the library leaves the thread on a stack it then
    unmaps; a Python handler (SA_ONSTACK) for SIGUSR1 then needs that stack. With the stack
    kept, the signal is handled and the process lives."""
    mmap = pytest.importorskip("mmap")
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    try:
        with sigstack.keep_signal_stack():
            region = mmap.mmap(-1, 256 * 1024)
            buf = (ctypes.c_char * len(region)).from_buffer(region)
            _set_stack(buf)
            del buf
        region.close()  # the library's stack is gone; ours is back
        os.kill(os.getpid(), signal.SIGUSR1)
        assert got == [1]
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_the_openvino_session_keeps_the_stack_when_compiled_and_freed():
    pytest.importorskip("openvino")
    import torch

    from hwbench.engine.runtimes import compile_module

    before = sigstack.current()
    s = compile_module(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), "openvino", 1)
    assert sigstack.current() == before
    assert s(torch.randn(1, 3, 8, 8).numpy())[0].shape == (1, 4, 6, 6)
    s.close()
    assert sigstack.current() == before
