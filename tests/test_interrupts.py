"""``fusionsearch.interrupts`` (issue 34): an interrupt is recorded wherever it lands, a finaliser
included, and raised at the next safe point; nothing is left pending after the block."""

from __future__ import annotations

import os
import signal

import pytest

from fusionsearch.interrupts import check_interrupt, interrupt_pending, interrupts_taken


class _Finaliser:
    def __del__(self):
        raise KeyboardInterrupt


def test_an_interrupt_in_a_finaliser_is_raised_at_the_next_safe_point():
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts_taken():
        _Finaliser()  # collected at once: Python cannot raise its KeyboardInterrupt here
        reached.append("after the finaliser")
        assert interrupt_pending()
        check_interrupt()
        reached.append("after the safe point")
    assert reached == ["after the finaliser"]
    assert not interrupt_pending()  # the block is over: the next one starts clean
    with interrupts_taken():
        check_interrupt()


def test_the_end_of_the_block_is_a_safe_point_and_an_error_while_pending_is_the_interrupt():
    with pytest.raises(KeyboardInterrupt), interrupts_taken():
        _Finaliser()
    with pytest.raises(KeyboardInterrupt) as caught, interrupts_taken():
        _Finaliser()
        raise RuntimeError("DataLoader worker exited unexpectedly")  # the same Ctrl-C stopped it
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError), interrupts_taken():  # nothing pending: an error stays itself
        raise RuntimeError("a bug")


def test_sigterm_and_sigint_are_recorded_even_when_their_exception_is_swallowed(default_sigint):
    for sig in (signal.SIGTERM, signal.SIGINT):
        before = signal.getsignal(sig)
        with pytest.raises(KeyboardInterrupt), interrupts_taken():
            try:
                os.kill(os.getpid(), sig)
                signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a point where Python runs the handler
            except KeyboardInterrupt:
                pass  # as a library's ``except BaseException`` around a database commit would
            assert interrupt_pending()
        assert signal.getsignal(sig) is before and not interrupt_pending()  # put back


def test_nested_blocks_share_one_record():
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts_taken():
        with interrupts_taken():
            _Finaliser()
        reached.append("past the inner block's end")  # a safe point too: never reached
    assert reached == [] and not interrupt_pending()
