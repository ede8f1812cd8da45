"""Process limits and lifetimes (Linux), shared by the embedded broker, the simulator and the
benchmarks."""

from __future__ import annotations

import ctypes
import resource
import signal

PR_SET_PDEATHSIG = 1


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child before exec (``preexec_fn``): receive ``sig`` when the parent dies, however
    it dies. Lost when the child later changes its user (as Mosquitto does when run as root)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
