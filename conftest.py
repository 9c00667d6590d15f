"""Repo-wide pytest fixtures: a live app served in-process for HTTP and browser tests; torch at
one intra-op thread for a module."""
from __future__ import annotations

import socket
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for the module's tests (restored after): tiny tensors gain
    nothing from more, and a training process runs at one, so results compared with one match
    bit for bit (a plain ``pytest`` runs at the machine's count; ``make test`` pins 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
