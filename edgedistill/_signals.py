"""Ctrl-C at a clean point: the first SIGINT asks the run to stop, the second stops it at once.

While :func:`graceful_sigint` is active (``pipeline.run`` installs it), the first Ctrl-C only sets a
flag. The training loop polls :func:`stop_requested` after every optimiser step, writes a checkpoint
and raises :class:`Interrupted`; the pipeline polls it between stages. A second Ctrl-C raises
``KeyboardInterrupt`` at once (atomic writes still leave nothing half-written). Outside the context
(library use) SIGINT keeps Python's default behaviour.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

_state = {"active": False, "requested": False}


class Interrupted(KeyboardInterrupt):
    """A stop at a clean point; ``where`` says where, ``checkpoint`` what was kept (both may be empty)."""

    def __init__(self, where: str = "", checkpoint: str = "") -> None:
        super().__init__(where)
        self.where, self.checkpoint = where, checkpoint


def stop_requested() -> bool:
    """True once Ctrl-C was pressed inside :func:`graceful_sigint`."""
    return _state["active"] and _state["requested"]


@contextmanager
def graceful_sigint(log: Callable[[str], None]) -> Iterator[None]:
    """Defer the first SIGINT to the next clean point (a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread() or _state["active"]:
        yield
        return

    def handler(signum, frame):
        if _state["requested"]:
            raise KeyboardInterrupt
        _state["requested"] = True
        log("Ctrl-C: stopping at the next clean point (after this training step or stage); press Ctrl-C again to stop at once.")

    previous = signal.signal(signal.SIGINT, handler)
    _state.update(active=True, requested=False)
    try:
        yield
    finally:
        _state.update(active=False, requested=False)
        signal.signal(signal.SIGINT, previous)


def interrupt_message(exc: BaseException) -> str:
    """One sentence for an interrupted run: where it stopped, what was kept and how to resume."""
    stage = getattr(exc, "stage", "")
    where = getattr(exc, "where", "")
    kept = getattr(exc, "checkpoint", "")
    command = getattr(exc, "resume_command", "") or "edgedistill run ... --resume"
    place = f" in the {stage} stage" if stage else ""
    place += f" ({where})" if where else ""
    what = f"the checkpoint {kept} is kept" if kept else "the last checkpoint and every finished stage are kept"
    return f"Interrupted{place}: {what}; continue with `{command}`."
