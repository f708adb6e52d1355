"""Work that may crash, run in a fresh interpreter: `python -m <module> ARGS`.

subprocess starts it with vfork + exec (posix_spawn) on Linux, never a fork() of
this process: the server has gRPC threads, and gRPC does not survive a fork. A
library aborting or segfaulting on a hostile file then kills the child, and the
parent reads how it ended. Used by the model check (riskserve.runtime.probe) and
the lleaves compiler (riskserve.runtime.compiled)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """How a child process ended and what it wrote."""

    #: Popen's: the exit status, or minus the signal that killed it; None when it
    #: was killed at the timeout.
    returncode: int | None
    stdout: bytes
    stderr: str
    seconds: float
    timeout: float | None = None

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def signal_name(self) -> str | None:
        """ "SIGABRT" when a signal killed it (not at the timeout), else None."""
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def how(self) -> str:
        """How it ended, for a message: "was killed by SIGABRT", "exited with status 1"."""
        if self.returncode is None:
            return f"did not finish within {self.timeout:g} s (killed)"
        sig = self.signal_name
        if sig is not None:
            return f"was killed by {sig}"
        return f"exited with status {self.returncode}"

    def stderr_line(self, limit: int = 300) -> str:
        """The most telling line of its stderr: the last fatal one, else the last
        error, else the last line."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        for word in ("fatal", "error"):
            found = [ln for ln in lines if word in ln.lower()]
            if found:
                lines = found
                break
        line = lines[-1] if lines else ""
        return line if len(line) <= limit else line[: limit - 1] + "…"


def run_module(
    module: str,
    args: Sequence[str],
    timeout: float | None = None,
) -> ChildResult:
    """Runs `python -m module args` (this interpreter), stdin closed, stdout and
    stderr captured; kills it after `timeout` seconds. Blocking: call it off the
    event loop. Raises OSError only when the child cannot be started."""
    cmd = [sys.executable, "-m", module, *args]
    started = time.perf_counter()
    returncode: int | None
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
        returncode, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:  # run() killed it and collected its output
        returncode = None
        out = e.stdout if isinstance(e.stdout, bytes) else b""
        err = e.stderr if isinstance(e.stderr, bytes) else b""
    seconds = time.perf_counter() - started
    return ChildResult(returncode, out, err.decode(errors="replace"), seconds, timeout)
