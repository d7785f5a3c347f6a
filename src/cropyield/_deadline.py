"""Blocking calls bounded by a deadline: :func:`call_with_deadline`.

Socket timeouts bound each read, not a request: a server that trickles bytes, retries
inside an HTTP library, or a stall late in a long body can each keep a call past the total
deadline a caller asked for. :func:`call_with_deadline` runs the blocking call in a daemon
thread and stops waiting for it at the deadline. The abandoned call goes on in the
background until its own timeouts end it (callers also cut those to the time left, so it
ends soon after); being a daemon thread it never holds interpreter exit, and its result
is dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["call_with_deadline"]

T = TypeVar("T")


def call_with_deadline(fn: Callable[[], T], timeout: float, *,
                       name: str = "cropyield-deadline",
                       cancel: threading.Event | None = None) -> T:
    """``fn()``, or :class:`TimeoutError` once ``timeout`` seconds have passed.

    Parameters
    ----------
    fn : callable
        Called without arguments in a new daemon thread.
    timeout : float
        Seconds to wait for it (<= 0: it is not started).
    name : str
        Name of the thread (for debugging).
    cancel : threading.Event, optional
        Set when the wait times out, so that ``fn`` can stop at its next check (e.g.
        between the chunks of a body it reads).

    Returns
    -------
    object
        What ``fn`` returned; an exception it raised is raised here.

    Raises
    ------
    TimeoutError
        ``fn`` did not finish in time; it is abandoned (its result or error is dropped).
    """
    if not timeout > 0:
        if cancel is not None:
            cancel.set()
        raise TimeoutError("no time left")
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(timeout):
        if cancel is not None:
            cancel.set()
        raise TimeoutError(f"not finished within {timeout:.3g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
