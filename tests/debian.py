"""Debian packages the tests run as real programs (Chromium, PgBouncer), installed with apt
on first use when missing, as a newcomer's fresh machine would need.

Without CI a failed install skips the tests that need the package (a laptop without root
or network); in CI it fails them, so they cannot silently stop running (``require``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

#: apt's own time, inside a test's set-up (a first Chromium install is the longest seen).
INSTALL_TIMEOUT = 840
INSTALL_LOCK = Path(tempfile.gettempdir()) / "tokenbank-apt-install.lock"

#: What is missing, as the names of the packages that bring it.
Missing = Callable[[], list[str]]


def apt_install(packages: list[str]) -> str | None:
    """Install ``packages`` with apt; ``None`` on success, else why not (with apt's output)."""
    if shutil.which("apt-get") is None:
        return f"{' '.join(packages)} missing and apt-get is not available"
    if os.geteuid() != 0:
        return f"{' '.join(packages)} missing and installing them needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
    ]
    for command in commands:
        try:
            done = subprocess.run(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.output or b""  # bytes even in text mode
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            return f"`{' '.join(command)}` timed out:\n{output}"
        if done.returncode != 0:
            return f"`{' '.join(command)}` exited {done.returncode}:\n{done.stdout}"
    return None


def ensure(missing: Missing) -> str | None:
    """Install what ``missing`` names; ``None`` when nothing is missing afterwards, else why.

    The lock keeps two pytest processes (or xdist workers) from running apt at once; the
    second finds the packages installed when it gets the lock.
    """
    if not missing():
        return None
    with INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = missing()
        problem = apt_install(wanted) if wanted else None
        if problem is None and (still := missing()):
            problem = f"apt-get reported success but {' '.join(still)} is still missing"
        return problem


def require(missing: Missing, purpose: str) -> None:
    """``ensure``, or skip the test (fail it in CI) saying what could not be installed."""
    if (problem := ensure(missing)) is not None:
        reason = f"{purpose} could not be installed: {problem}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
