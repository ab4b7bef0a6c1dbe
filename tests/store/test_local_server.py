"""deploy/clickhouse_local_server.py: prints the store URL only once its own server listens, and
takes the server down with it on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "deploy" / "clickhouse_local_server.py"


def test_a_port_already_in_use_is_a_one_line_failure_not_a_url(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([sys.executable, str(SCRIPT), "--port", str(port), "--dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, "")
    [reason] = result.stderr.strip().splitlines()
    assert "Address already in use" in reason


def test_sigterm_stops_the_server_it_started(tmp_path: Path) -> None:
    script = subprocess.Popen([sys.executable, str(SCRIPT), "--dir", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert script.stdout.readline().startswith("clickhouse://127.0.0.1:")
        [server_pid] = [int(pid) for pid in Path(f"/proc/{script.pid}/task/{script.pid}/children").read_text().split()]
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if script.poll() is None:
            script.kill()
    assert not _running(server_pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent (gone) would have reaped it.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
