"""Starts a throwaway clickhouse-server on loopback with its own temporary data directory.

Used by the test suite and the ingest benchmark; also runnable by hand:
    python deploy/clickhouse_local_server.py --port 19000 --dir /tmp/ch
prints the store URL and serves until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SERVER_BINARY = "/usr/sbin/clickhouse-server"
_TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp

# <yandex> is the root element 18.x expects (newer servers accept it too).
_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/server.err.log</errorlog></logger>
  <tcp_port>{port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/data/tmp/</tmp_path>
  <user_files_path>{dir}/data/user_files/</user_files_path>
  <format_schema_path>{dir}/data/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <profiles><default></default></profiles>
  <quotas><default></default></quotas>
</yandex>
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalClickHouse:
    port: int
    directory: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"clickhouse://127.0.0.1:{self.port}/mlscope"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start_again(self) -> None:
        """Restarts a stopped server on the same port and data (for outage tests)."""
        self.process = _launch(self.directory)
        _wait_ready(self.port, self.process, self.directory)


def _launch(directory: Path) -> subprocess.Popen:
    # cwd matters: the server (like chdb) reads ./config.xml when it can.
    return subprocess.Popen(
        [SERVER_BINARY, f"--config-file={directory / 'config.xml'}"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_ready(port: int, process: subprocess.Popen, directory: Path, timeout_s: float = 60) -> None:
    """Returns once `process` itself listens on `port`: a connection alone could reach another
    process that holds the port while this server fails to bind it ("Address already in use")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (directory / "server.err.log")
            detail = (log.read_text().strip().splitlines() or [""])[-1] if log.exists() else ""
            raise RuntimeError(f"clickhouse-server exited with {process.returncode}: {detail}")
        if _listens(process.pid, port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"clickhouse-server did not listen on {port} within {timeout_s} s")


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port` (Linux /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == _TCP_LISTEN:
                listening.add(f"socket:[{inode}]")
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process is gone
        return False
    for descriptor in descriptors:
        with contextlib.suppress(OSError):  # a descriptor closed while we look
            if os.readlink(descriptor) in listening:
                return True
    return False


def start(directory: str | None = None, port: int | None = None) -> LocalClickHouse:
    if not Path(SERVER_BINARY).exists():
        raise RuntimeError(
            f"{SERVER_BINARY} is missing: install it with 'apt-get install clickhouse-server' "
            "(scripts/test does this)"
        )
    root = Path(directory or tempfile.mkdtemp(prefix="mlscope-ch-"))
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    (root / "config.xml").write_text(_CONFIG.format(dir=root, port=port))
    process = _launch(root)
    try:
        _wait_ready(port, process, root)
    except BaseException:  # not ready (or interrupted): leave no server behind
        process.kill()
        process.wait()
        raise
    return LocalClickHouse(port=port, directory=root, process=process)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, through the cleanups below: the server is never left orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server = start(args.dir, args.port)
    except RuntimeError as exc:
        print(f"clickhouse_local_server: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    try:  # the URL inside: a SIGTERM right after it is printed must still reach the cleanup
        print(server.url, flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if args.dir is None:
            shutil.rmtree(server.directory, ignore_errors=True)


if __name__ == "__main__":
    main()
