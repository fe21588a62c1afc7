"""The ``synovia`` command's entry point, outside the packages so that it runs before they load.

Loading JAX takes a second or two; Ctrl-C or SIGTERM (a cluster's time limit) in that time ends the
command as it would later (solver.cli.main): exit 130 and one line, not a traceback. Nothing has been
opened or written yet, so the process ends at once (``os._exit``): an exception raised by the signal
could land inside a compiled extension being imported (jaxlib's nanobind modules), which then aborts
the process ("terminate called after throwing an instance of 'nanobind::python_error'").
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_loading(signum, frame):
    try:
        sys.stderr.write("synovia: error: interrupted while starting\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def main() -> int:
    if sys.argv[1:] == ["--version"]:  # answered without loading JAX (a second or two)
        from importlib import metadata

        try:
            version = metadata.version("synovia")
        except metadata.PackageNotFoundError:  # a source tree never installed (as fields.__version__ says)
            version = "0+unknown"
        print(f"synovia {version}")
        return 0
    handlers = {s: signal.signal(s, _interrupted_while_loading) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from solver.cli import main as run_command
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return run_command()


if __name__ == "__main__":
    sys.exit(main())
