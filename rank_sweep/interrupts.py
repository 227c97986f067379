"""SIGINT (Ctrl-C) and SIGTERM: the current trial ends the same way in both stores, the command exits 130 / 143.

    with interrupts.handled("rank-sweep"):   # the CLI: install the handlers, exit 128 + signal number
        run_study(cfg)

The first signal raises KeyboardInterrupt where the program is (Lightning turns it into ``sys.exit(1)`` after
its own shutdown; :func:`was_interrupted` tells that exit from others), except while a trial's outcome is being
written (from :func:`hold`, called before a trained trial is scored and logged, to :func:`release` at the next
safe point: after Optuna has stored the trial, or after the summary): there the signal waits, the trial is
recorded FINISHED in MLflow and COMPLETE in the study, and :func:`release` raises it. The one commit point of a
trial is Optuna's: an interrupted trial is FAIL there and its MLflow run FAILED; a finished one is both. A second
signal is ignored (one line says the first is being handled): no second traceback. Without :func:`handled` (a
library caller, a test) nothing here changes how signals behave.
"""

from __future__ import annotations

import contextlib
import signal
import sys

_state = {"installed": False, "received": None, "held": False}


def _handler(signum, frame) -> None:
    if _state["received"] is not None:  # the second signal: the first is being handled
        print(f"rank-sweep: {signal.Signals(signum).name} again: already stopping", file=sys.stderr, flush=True)
        return
    _state["received"] = signum
    if _state["held"]:
        print(f"rank-sweep: {signal.Signals(signum).name}: stopping once this trial is recorded", file=sys.stderr,
              flush=True)
        return
    raise KeyboardInterrupt


def received() -> int | None:
    """The number of the first signal received, or None."""
    return _state["received"]


def was_interrupted(error: BaseException) -> bool:
    """``error`` is how a signal ended what ran: a KeyboardInterrupt, or the ``sys.exit(1)`` Lightning makes of it."""
    return isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and received() is not None)


def hold() -> None:
    """From here a signal waits for :func:`release`: a trial's outcome is being written to the stores."""
    _state["held"] = _state["installed"]


def release() -> None:
    """A safe point (a trial stored in both stores, or the summary written): raise a signal that waited."""
    _state["held"] = False
    if _state["installed"] and _state["received"] is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def committing():
    """``hold()`` for the body, then ``release()``."""
    hold()
    yield
    release()


@contextlib.contextmanager
def handled(command: str, after: str):
    """Install the handlers for the body; a signal ends the command with one line (``after`` says what was kept)
    and status 128 + signal number."""
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _state.update(installed=True, received=None, held=False)
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as e:
        if not was_interrupted(e):
            raise
        signum = received() or signal.SIGINT
        print(f"{command}: interrupted by {signal.Signals(signum).name}: {after}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    finally:
        _state.update(installed=False, held=False)
        for s, h in previous.items():
            signal.signal(s, h)
