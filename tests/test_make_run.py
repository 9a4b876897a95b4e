"""``make run`` (scripts/run-local.sh) as a newcomer runs it, twice by mistake: the second
stops at once with what to do and touches nothing of the first, and stopping ``make``
stops the service and the emulator with it."""

from __future__ import annotations

import os
import re
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
    llm_port: int


def _env(port: int, emulator_port: int, var: Path, llm_port: int) -> dict[str, str]:
    return clean_env(
        {
            "BIN": str(TOKENBANK.parent),
            "PORT": str(port),
            "EMULATOR_PORT": str(emulator_port),
            "LLM_EMULATOR_PORT": str(llm_port),
            "TOKENBANK_VAR_DIR": str(var),
            # The instance's own file only, never a ./.env of the checkout's.
            "TOKENBANK_ENV_FILE": str(var / ".env"),
            "TOKENBANK_DATABASE_URL": f"sqlite:///{var / 'tokenbank.db'}",
            "TOKENBANK_LOG_LEVEL": "warning",
        }
    )


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Instance]:
    port, emulator_port, llm_port = free_ports(3)
    var = tmp_path / "first"
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        # A shell stands for make: the script's parent, which a signal may stop alone.
        popen = subprocess.Popen(
            ["bash", "-c", f"{SCRIPT}; true"],
            cwd=REPO,
            env=_env(port, emulator_port, var, llm_port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    instance = Instance(popen, port, emulator_port, var, log, llm_port)
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
        env=_env(port, emulator_port, tmp_path / "second", free_ports(1)[0]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_second_make_run_stops_at_once_and_touches_nothing(
    running: Instance, tmp_path: Path
) -> None:
    emulator_log = running.var / f"stripe-emulator-{running.emulator_port}.log"
    # The running instance's worker reconciles once at start (its last call lists
    # invoices), then not for 15 minutes: wait for it, so that only a second instance
    # could change the log.
    deadline = time.monotonic() + 60
    while b"GET /v1/invoices?" not in emulator_log.read_bytes():
        assert time.monotonic() < deadline, emulator_log.read_text()[-2000:]
        time.sleep(0.2)
    time.sleep(0.5)
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
        assert "make run PORT=8001 EMULATOR_PORT=12121 LLM_EMULATOR_PORT=12122" in second.stderr
        assert "tokenbank is starting" not in second.stdout
        assert not (tmp_path / "second").exists()  # nothing written, not even its folder
    assert emulator_log.read_bytes() == before
    assert httpx.get(f"http://127.0.0.1:{running.port}/readyz", timeout=5).status_code == 200


def test_stopping_make_stops_the_service_and_the_emulator(running: Instance) -> None:
    assert _listening(running.port) and _listening(running.emulator_port)
    assert _listening(running.llm_port)
    os.kill(running.popen.pid, signal.SIGTERM)  # the parent alone, as `kill <make>` does
    running.popen.wait(10)
    deadline = time.monotonic() + 15
    while any(_listening(p) for p in (running.port, running.emulator_port, running.llm_port)):
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


def _terminal(instance: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    """A command typed in a second terminal: none of make run's environment, only its
    files (the database, and the var/.env it wrote)."""
    env = _env(instance.port, instance.emulator_port, instance.var, instance.llm_port)
    for name in ("BIN", "PORT", "EMULATOR_PORT", "LLM_EMULATOR_PORT"):
        env.pop(name)
    return subprocess.run(
        [str(TOKENBANK), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_terminal_and_a_restart_keep_the_same_stripe(
    running: Instance, tmp_path: Path
) -> None:
    """The CLI reaches the emulator make run started (through var/.env), and a restart on
    the ports it left, at once, finds the emulated account as it was: checkout links work,
    reconcile finds nothing wrong."""
    written = (running.var / ".env").read_text()
    assert f"STRIPE_API_BASE=http://127.0.0.1:{running.emulator_port}" in written
    created = _terminal(running, "apikeys", "create", "--name", "t", "--scope", "admin")
    assert created.returncode == 0, created
    key = created.stdout.strip().splitlines()[-1]
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{running.port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert api.put("/api/v1/users/ann", json={}).status_code in (200, 201)
    started = api.post("/api/v1/users/ann/checkout-sessions", json={"package_id": "plus"})
    assert started.status_code == 201, started.text
    checkout_url = started.json()["url"]
    reconciled = _terminal(running, "reconcile")
    assert reconciled.returncode == 0, reconciled
    assert " 0 errors" in reconciled.stdout

    os.killpg(running.popen.pid, signal.SIGTERM)
    running.popen.wait(10)
    while any(_listening(p) for p in (running.port, running.emulator_port, running.llm_port)):
        time.sleep(0.1)
    with (tmp_path / "again.log").open("wb") as out:
        again = subprocess.Popen(
            [str(SCRIPT)],
            cwd=REPO,
            env=_env(running.port, running.emulator_port, running.var, running.llm_port),
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
        page = httpx.get(checkout_url, timeout=10)
        assert page.status_code == 200 and 'name="card_number"' in page.text
        reconciled = _terminal(running, "reconcile")
        assert reconciled.returncode == 0 and " 0 errors" in reconciled.stdout, reconciled
        assert api.get("/api/v1/purchases/1").json()["status"] == "pending"
    finally:
        api.close()
        os.killpg(again.pid, signal.SIGKILL)
        again.wait(10)


def _admin_key(instance: Instance) -> str:
    made = _terminal(instance, "apikeys", "create", "--name", "tour-python", "--scope", "admin")
    assert made.returncode == 0, made
    return made.stdout.strip().splitlines()[-1]


def _tour() -> tuple[list[str], list[str]]:
    """The README tour's shell and Python blocks, in order."""
    readme = (REPO / "README.md").read_text()
    tour = readme.split("## A 5-minute tour", 1)[1].split("\n## ", 1)[0]
    shell = re.findall(r"```sh\n(.*?)```", tour, flags=re.S)
    python = re.findall(r"```python\n(.*?)```", tour, flags=re.S)
    return shell, python


def test_the_readme_tour_runs_top_to_bottom_as_written(running: Instance) -> None:
    """Every command of the README's tour, in a second terminal beside `make run`: each one
    succeeds but the one whose comment says how it fails, and the Python that needs no
    model (the library block) runs too."""
    shell, python = _tour()
    assert len(shell) >= 2 and python
    here = f"127.0.0.1:{running.port}"
    env = _env(running.port, running.emulator_port, running.var, running.llm_port)
    for name in ("BIN", "PORT", "EMULATOR_PORT", "LLM_EMULATOR_PORT"):
        env.pop(name)
    # One terminal: what the first block exports, the next ones use.
    emulator = f"127.0.0.1:{running.emulator_port}"
    script = "\n".join(shell).replace("localhost:8000", here).replace("127.0.0.1:8000", here)
    script = script.replace("localhost:12111", emulator).replace("127.0.0.1:12111", emulator)
    models = f"127.0.0.1:{running.llm_port}"
    script = script.replace("localhost:12112", models).replace("127.0.0.1:12112", models)
    ran = subprocess.run(
        ["bash", "-c", "trap 'echo \"FAILED $? :: $BASH_COMMAND\" >&2' ERR\n" + script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    failures = [line for line in ran.stderr.splitlines() if line.startswith("FAILED ")]
    assert "already granted with this key, nothing changed" in ran.stdout, ran
    assert "refunded 50 tokens to bob" in ran.stdout, ran
    assert " 0 errors" in ran.stdout and "ledger verified" in ran.stdout, ran
    # Only the spend the README says fails (exit 4), nothing else.
    assert [line.split(" :: ")[0] for line in failures] == ["FAILED 4"], failures
    assert "spend bob 5000" in failures[0]
    database = f"sqlite:///{running.var / 'tokenbank.db'}"
    # The gateway's block reads alice's model key, as the shell's export left it.
    made = httpx.post(
        f"http://{here}/api/v1/users/alice/llm-keys",
        json={"name": "tour"},
        headers={"Authorization": f"Bearer {_admin_key(running)}"},
    )
    assert made.status_code == 201, made.text
    env["ALICE"] = made.json()["key"]
    for block in python:
        if "llm." in block:
            continue  # needs a model: shown, not run
        code = block.replace("sqlite:///var/tokenbank.db", database).replace("127.0.0.1:8000", here)
        ran = subprocess.run(
            [str(TOKENBANK.parent / "python"), "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, ran
