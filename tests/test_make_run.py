"""``make run`` (scripts/run-local.sh) as a newcomer runs it, twice by mistake: the second
stops at once with what to do and touches nothing of the first, and stopping ``make``
stops the service and the emulator with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import REPO, TOKENBANK, clean_env, free_ports

SCRIPT = REPO / "scripts" / "run-local.sh"
START_TIMEOUT = 60.0


@dataclass
class Instance:
    popen: subprocess.Popen[bytes]
    port: int
    emulator_port: int
    var: Path
    log: Path


def _env(port: int, emulator_port: int, var: Path) -> dict[str, str]:
    return clean_env(
        {
            "BIN": str(TOKENBANK.parent),
            "PORT": str(port),
            "EMULATOR_PORT": str(emulator_port),
            "TOKENBANK_VAR_DIR": str(var),
            "TOKENBANK_DATABASE_URL": f"sqlite:///{var / 'tokenbank.db'}",
            "TOKENBANK_LOG_LEVEL": "warning",
        }
    )


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Instance]:
    port, emulator_port = free_ports(2)
    var = tmp_path / "first"
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        # A shell stands for make: the script's parent, which a signal may stop alone.
        popen = subprocess.Popen(
            ["bash", "-c", f"{SCRIPT}; true"],
            cwd=REPO,
            env=_env(port, emulator_port, var),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    instance = Instance(popen, port, emulator_port, var, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert popen.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield instance
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)


def _second(tmp_path: Path, port: int, emulator_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        cwd=REPO,
        env=_env(port, emulator_port, tmp_path / "second"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_second_make_run_stops_at_once_and_touches_nothing(
    running: Instance, tmp_path: Path
) -> None:
    emulator_log = running.var / f"stripe-emulator-{running.emulator_port}.log"
    before = emulator_log.read_bytes()
    (other,) = free_ports(1)
    for port, emulator_port in (
        (running.port, running.emulator_port),  # both taken
        (other, running.emulator_port),  # the emulator's taken
        (running.port, other),  # the service's taken
    ):
        started = time.monotonic()
        second = _second(tmp_path, port, emulator_port)
        assert second.returncode == 1, second
        assert time.monotonic() - started < 10
        assert f"Port {running.port if port == running.port else emulator_port} is in use" in (
            second.stderr
        )
        assert "make run PORT=8001 EMULATOR_PORT=12121" in second.stderr
        assert "tokenbank is starting" not in second.stdout
        assert not (tmp_path / "second").exists()  # nothing written, not even its folder
    assert emulator_log.read_bytes() == before
    assert httpx.get(f"http://127.0.0.1:{running.port}/readyz", timeout=5).status_code == 200


def test_stopping_make_stops_the_service_and_the_emulator(running: Instance) -> None:
    assert _listening(running.port) and _listening(running.emulator_port)
    os.kill(running.popen.pid, signal.SIGTERM)  # the parent alone, as `kill <make>` does
    running.popen.wait(10)
    deadline = time.monotonic() + 15
    while _listening(running.port) or _listening(running.emulator_port):
        assert time.monotonic() < deadline, running.log.read_text()
        time.sleep(0.1)
    # Nothing of the group is left behind.
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(running.popen.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of make run's group are still alive"
        time.sleep(0.1)


def test_make_run_starts_again_at_once_on_the_ports_it_left(
    running: Instance, tmp_path: Path
) -> None:
    """The stopped instance's connections leave its ports in TIME_WAIT: no reason to wait."""
    assert httpx.get(f"http://127.0.0.1:{running.port}/readyz", timeout=5).status_code == 200
    os.killpg(running.popen.pid, signal.SIGTERM)
    running.popen.wait(10)
    while _listening(running.port) or _listening(running.emulator_port):
        time.sleep(0.1)
    with (tmp_path / "again.log").open("wb") as out:
        again = subprocess.Popen(
            [str(SCRIPT)],
            cwd=REPO,
            env=_env(running.port, running.emulator_port, tmp_path / "again"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert again.poll() is None, (tmp_path / "again.log").read_text()
            try:
                url = f"http://127.0.0.1:{running.port}/readyz"
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "again.log").read_text()
            time.sleep(0.1)
    finally:
        os.killpg(again.pid, signal.SIGKILL)
        again.wait(10)
