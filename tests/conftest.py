"""No test touches the network. LPIPS downloads its AlexNet weights on first use (training.lpips_metric), so:
- MAGVIT3D_OFFLINE=1 for this process and every command a test starts (they inherit the environment): the code never
  tries to download;
- in this process, a connection or name lookup of any host other than this machine fails like a machine without a
  network would (OSError), for a test that lifts MAGVIT3D_OFFLINE to exercise the download path."""
from __future__ import annotations

import errno
import os
import socket

import pytest

os.environ["MAGVIT3D_OFFLINE"] = "1"

LOCAL = {"localhost", "127.0.0.1", "::1", "", None}


def _host(address) -> str | None:
    return address[0] if isinstance(address, tuple) and address else None


@pytest.fixture(autouse=True)
def block_network(monkeypatch):
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family == getattr(socket, "AF_UNIX", None) or _host(address) in LOCAL:
            return real_connect(self, address)
        raise OSError(errno.ENETUNREACH, f"network blocked in the tests (connect to {address!r})")

    def getaddrinfo(host, *args, **kwargs):
        if host in LOCAL:
            return real_getaddrinfo(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, f"network blocked in the tests (lookup of {host!r})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two (no per-op synchronisation; measured 10x on a loaded
    2-core machine). A module asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`; the thread
    count is restored afterwards for the other test files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun_failure(stderr: str) -> str:
    """What a failed torchrun's stderr says about why a rank died: the lines naming the error (a C++ terminate and
    its what(), a Python exception) and then the tail. The tail alone holds only torchrun's summary, which says a
    rank got a signal but not why (seen once: rank 1 SIGABRT at the end of a 4-step probe run, not reproduced in
    15 reruns)."""
    why = [line for line in stderr.splitlines()
           if any(k in line for k in ("terminate called", "what():", "Error", "Exception", "error:"))]
    return "\n".join(why[:20]) + "\n...\n" + stderr[-1500:]
