"""The command line in this process, through the path users hit: click's CliRunner driving
``edgedistill.cli.main()`` (what the ``edgedistill`` console script and ``python -m edgedistill`` call), so
errors become the same one sentence on stderr and the same exit codes as in a shell. A subprocess costs
seconds (torch is imported again); keep one only where a separate process is the point (signals, a lock
held by another process, the console script itself)."""

from __future__ import annotations

import subprocess
import sys
import traceback

from click.testing import CliRunner


class _Main:
    """``edgedistill.cli.main`` in the shape CliRunner.invoke calls: ``main(args, prog_name)``."""

    name = "edgedistill"

    def main(self, args=(), prog_name=None, **extra):
        from edgedistill import cli

        argv = sys.argv
        sys.argv = [prog_name or self.name, *args]
        try:
            cli.main()
        finally:
            sys.argv = argv


def edgedistill(*args) -> subprocess.CompletedProcess:
    """``edgedistill ARGS`` in this process: the exit code, stdout and stderr, as a subprocess would give them
    (an exception escaping main() is printed as the interpreter would, traceback and exit code 1)."""
    res = CliRunner().invoke(_Main(), [str(a) for a in args])
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*res.exc_info))
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, stderr)
