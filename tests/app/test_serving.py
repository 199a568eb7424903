"""The app as started by the README command listens on localhost only (it has no login)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _other_address() -> str | None:
    """An address of this machine that is not loopback (where a colleague on the network would connect)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_default_server_listens_on_localhost_only(tmp_path):
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address to test from")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, BDCORE_RUNS_DIR=str(tmp_path / "runs"))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while not _accepts("127.0.0.1", port):
            assert time.time() < deadline and proc.poll() is None, "streamlit did not start"
            time.sleep(0.3)
        assert not _accepts(other, port), f"the app answers on {other}:{port}, not only on localhost"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
