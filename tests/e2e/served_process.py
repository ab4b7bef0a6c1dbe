"""Runs `mlscope` as a user does: a separate process whose bound ports are read from stdout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    process: subprocess.Popen
    ports: dict[str, int]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['http']}{path}"

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return json.loads(response.read())

    def post_json(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url(path), data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def start_mlscope(args: list[str], env_data: Path, expect: tuple[str, ...]) -> tuple[subprocess.Popen, dict[str, int]]:
    """Starts `mlscope ARGS` and reads the `name: port` lines it prints."""
    env = {**os.environ, "MLSCOPE_DATA": str(env_data), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlscope", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=REPO,
    )
    ports: dict[str, int] = {}
    while set(expect) - set(ports):
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"mlscope {args} exited: {process.stderr.read()}")
        match = re.fullmatch(r"([a-z-]+): (\d+)\n", line)
        if match:
            ports[match.group(1)] = int(match.group(2))
    return process, ports
