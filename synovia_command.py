"""The ``synovia`` command's entry point, outside the packages so that it runs before they load.

Loading JAX takes a second or two; Ctrl-C or SIGTERM (a cluster's time limit) in that time ends the
command as it would later (solver.cli.main): exit 130 and one line, not a traceback. The
KeyboardInterrupt a signal raises can land in a callback whose exceptions Python only reports
(JAX's garbage-collection hook): so the signal is also recorded, and such a report left out.
"""

from __future__ import annotations

import signal
import sys

_SIGNALLED: list[int] = []


def _interrupt(signum, frame):
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _unless_interrupt(unraisable) -> None:
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def main() -> int:
    handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    hook, sys.unraisablehook = sys.unraisablehook, _unless_interrupt
    try:
        from solver.cli import main as run_command
    except KeyboardInterrupt:
        _SIGNALLED.append(signal.SIGINT)
    finally:
        sys.unraisablehook = hook
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if _SIGNALLED:
        print("synovia: error: interrupted while starting", file=sys.stderr)
        return 130
    return run_command()


if __name__ == "__main__":
    sys.exit(main())
