"""Running ``tokenbank`` commands as real processes, for the tests that need the service as
an operator runs it (browser tests, the fault suite): free ports, a clean environment, a
process with its log, readiness polling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[1]
TOKENBANK = Path(sys.executable).parent / "tokenbank"
STOP_TIMEOUT = 10.0


def free_ports(count: int) -> list[int]:
    """Ports free right now; all probes stay bound until the last is picked, so they differ."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without the developer's own tokenbank or Stripe
    settings, plus ``extra``."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("TOKENBANK_", "STRIPE_"))
    }
    # Plain tracebacks read better in the logs.
    return {**inherited, "_TYPER_STANDARD_TRACEBACK": "1", **extra}


def cli_error(exc: subprocess.CalledProcessError) -> subprocess.CalledProcessError:
    # CalledProcessError's message leaves the output out; a failing test should show it.
    exc.add_note(f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")
    return exc


@dataclass
class Process:
    """One ``tokenbank`` process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @classmethod
    def start(
        cls, name: str, args: Iterable[str], *, env: Mapping[str, str], directory: Path
    ) -> Process:
        log_path = directory / f"{name}.log"
        log = log_path.open("ab")
        popen = subprocess.Popen(
            [str(TOKENBANK), *args],
            env=dict(env),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return cls(name, popen, log_path, log)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> int:
        """``kill -9``: no cleanup, no answer sent; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        code = self.popen.wait(STOP_TIMEOUT)
        self.log.close()
        return code

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        self.log.close()


def wait_until_up(url: str, processes: Iterable[Process], *, timeout: float) -> str | None:
    """Poll ``url`` until it answers 200; the reason it did not (a process died, or the
    time ran out), or None."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        for process in processes:
            if (code := process.popen.poll()) is not None:
                return f"{process.name} exited with status {code}"
        try:
            answer = httpx.get(url, timeout=1)
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if answer.status_code == 200:
                return None
            last = f"{answer.status_code} {answer.text[:500]}"
        time.sleep(0.05)
    return f"{url} not ready after {timeout:.0f}s (last: {last})"


@contextmanager
def model_emulator(directory: Path, *, instant: bool = True) -> Iterator[str]:
    """``tokenbank llm-emulator`` as a process of its own; yields its URL. ``instant``: it
    streams with no delay between tokens, for tests that are not about timing."""
    (port,) = free_ports(1)
    args = ["llm-emulator", "--port", str(port)]
    process = Process.start("llm-emulator", args, env=clean_env({}), directory=directory)
    url = f"http://127.0.0.1:{port}"
    try:
        problem = wait_until_up(f"{url}/_emulator/health", [process], timeout=30)
        assert problem is None, problem + process.output()
        if instant:
            httpx.post(f"{url}/_emulator/config", json={"first_token_ms": 0, "token_ms": 0})
        yield url
    finally:
        process.stop()
