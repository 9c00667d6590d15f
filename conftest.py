"""Repo-wide pytest fixtures: a live app served in-process for HTTP and browser tests."""
from __future__ import annotations

import socket
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """Base URL of the live training app, served on a free port from a thread of this process."""
    requests = pytest.importorskip("requests")
    from workbench.dashboard.live import serve_live

    port = free_port()
    server = serve_live(port, store_root=tmp_path_factory.mktemp("runs"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/liveness", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"the app did not come up on {url} within 30 s")
        time.sleep(0.1)
    yield url
    server.stop()
