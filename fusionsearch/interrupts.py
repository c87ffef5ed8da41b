"""Ctrl-C and SIGTERM: taken wherever they land, acted on at the next safe point.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be. Where it cannot
propagate (a finaliser, a ``WeakKeyDictionary`` callback: "Exception ignored in ...") or where a
library turns it into another error (Optuna's ``StorageInternalError`` around a database commit,
which a caller may catch), it would be lost, and a study would go on for hours after the user
asked it to stop. So the interrupt is first recorded here, in the signal handler itself and in
``sys.unraisablehook``, and only then raised; the places where stopping is safe ask ``check_interrupt()``:
the worker between trials, ``fit`` at every step and evaluation batch, the supernet's training.
A recorded interrupt stays pending until the outermost ``interrupts_taken()`` block ends.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["request_interrupt", "interrupt_pending", "check_interrupt", "interrupts_taken", "interrupts_deferred"]

_STATE: dict[str, Any] = {"pending": None, "depth": 0, "deferred": 0}


def request_interrupt(reason: str = "interrupted") -> None:
    """Record an interrupt (the first reason is kept); the next ``check_interrupt()`` raises it."""
    if _STATE["pending"] is None:
        _STATE["pending"] = reason


def interrupt_pending() -> bool:
    """Whether an interrupt was taken and not yet acted on by the end of an ``interrupts_taken()`` block."""
    return _STATE["pending"] is not None


def check_interrupt() -> None:
    """A safe point: raise ``KeyboardInterrupt`` if an interrupt is pending."""
    if _STATE["pending"] is not None:
        raise KeyboardInterrupt(_STATE["pending"])


def _on_signal(signum: int, frame: Any) -> None:
    request_interrupt(f"signal {signum}")
    if not _STATE["deferred"]:
        raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """While the block runs, an interrupt is only recorded, not raised: for a few statements that
    must not be cut in two (a trial claimed in the database and not yet in the hands of the code
    that queues it again when it is stopped). The next ``check_interrupt()`` raises it."""
    _STATE["deferred"] += 1
    try:
        yield
    finally:
        _STATE["deferred"] -= 1


def _on_unraisable(info: Any) -> None:
    if isinstance(info.exc_value, KeyboardInterrupt):
        # Python cannot raise it here: the next check_interrupt() does
        request_interrupt(str(info.exc_value) or "interrupted")
    else:
        sys.__unraisablehook__(info)


@contextlib.contextmanager
def interrupts_taken() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM are recorded and raised, an interrupt that lands
    in a finaliser is recorded, and the block's normal end is a safe point. SIGINT that the
    process was started to ignore (``nohup``, a background job) stays ignored. Nested blocks
    share one record; the outermost clears it when it ends. An error that ends the block while an
    interrupt is pending (a database commit cut short, a data loader's worker stopped by the same
    Ctrl-C) is the interrupt's doing: it comes out as ``KeyboardInterrupt``, from that error.
    Only the main thread takes interrupts (Python delivers signals there); in another thread the
    block only checks at its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        check_interrupt()
        return
    outer = _STATE["depth"] == 0
    if outer:
        _STATE["pending"] = None
    _STATE["depth"] += 1
    saved = {
        s: signal.signal(s, _on_signal)
        for s in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    hook, sys.unraisablehook = sys.unraisablehook, _on_unraisable
    try:
        try:
            yield
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as e:  # raised while an interrupt was pending: the interrupt's doing
            if interrupt_pending():
                raise KeyboardInterrupt(_STATE["pending"]) from e
            raise
        check_interrupt()
    finally:
        for sig, old in saved.items():
            if old is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(sig, old)
        sys.unraisablehook = hook
        _STATE["depth"] -= 1
        if outer:
            _STATE["pending"] = None
