"""Serving an ASGI app on a free port from a thread, for clients that speak real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import uvicorn


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped at start-up"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def one_connection(base_url: str, requests: list[bytes], timeout: float = 10) -> list[int]:
    """Send ``requests`` (whole HTTP/1.1 requests) one after another on one TCP connection
    and return each answer's status: proves the server kept the connection open (a closed
    one fails the next request with a reset or an empty read)."""
    parts = urlsplit(base_url)
    statuses = []
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        for request in requests:
            sock.sendall(request)
            status_line = reader.readline()
            assert status_line, "the server closed the connection"
            statuses.append(int(status_line.split()[1]))
            length = 0
            chunked = False
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "transfer-encoding" and "chunked" in value:
                    chunked = True
            if chunked:
                while (size := int(reader.readline().strip(), 16)) > 0:
                    reader.read(size + 2)
                reader.readline()
            else:
                reader.read(length)
    return statuses


def http_request(
    method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 request, as bytes, for ``one_connection``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
