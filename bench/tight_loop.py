"""A tight loop under `mlscope run` against a real `mlscope serve`: spans stored per level
against the spans the run produced, and the drops it recorded. Nothing may go missing
uncounted: stored + dropped = produced, per level.

    .venv/bin/python bench/tight_loop.py --calls 5000 --runs 3 [--level library]

The program calls a 3-layer model (Linear, ReLU, Linear): per call one model span, 4 layer
spans (the Sequential and its three children) and 3 library spans at library level.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the tests' server helper is not installed

from mlscope.conventions import DROPPED_LAYER, DROPPED_LIBRARY, DROPPED_MODEL  # noqa: E402
from tests.e2e.served_process import start_mlscope  # noqa: E402

PROGRAM = """
import sys, time, torch
started = time.monotonic()
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
with torch.inference_mode():
    for _ in range({calls}):
        model(torch.ones(1, 8))
print(f"loop {{time.monotonic() - started:.2f}} s", file=sys.stderr)
"""
PER_CALL = {"model": (1, DROPPED_MODEL), "layer": (4, DROPPED_LAYER), "library": (3, DROPPED_LIBRARY)}


def _sql(http_port: int, query: str) -> list[list]:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/sql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["rows"]


def one_run(ports: dict[str, int], calls: int, level: str) -> str:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "mlscope", "run", "--endpoint", f"http://127.0.0.1:{ports['otlp-http']}", "--level", level,
         "--", sys.executable, "-c", PROGRAM.format(calls=calls)],
        capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    last = run.stderr.strip().splitlines()[-1]
    trace_id = re.search(r"trace ([0-9a-f]{32})", last).group(1)
    time.sleep(3)  # the collector's flush interval, with room
    stored = dict(_sql(ports["http"], f"SELECT level, count() FROM spans WHERE trace_id = '{trace_id}' GROUP BY level"))
    dropped_rows = _sql(ports["http"], "SELECT attr_keys, attr_values FROM spans WHERE trace_id = "
                                       f"'{trace_id}' AND parent_span_id = ''")
    attributes = dict(zip(*dropped_rows[0])) if dropped_rows else {}
    cells = []
    for name, (per_call, dropped_attribute) in PER_CALL.items():
        if name == "library" and level != "library":
            continue
        dropped = int(attributes.get(dropped_attribute, 0))
        produced = calls * per_call
        cells.append(f"{name} {stored.get(name, 0)}+{dropped}/{produced}{'' if stored.get(name, 0) + dropped == produced else ' MISSING'}")
    return f"wall {wall:.1f} s  " + "  ".join(cells) + f"  | {last[:80]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--level", default="library", choices=("layer", "library"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mlscope-tight-loop-"))
    process, ports = start_mlscope(["serve", "--store", f"embedded://{scratch / 'store'}", "--port", "0",
                                    "--otlp-http-port", "0", "--otlp-grpc-port", "0"], scratch, ("otlp-http", "http"))
    try:
        print(f"{args.calls} calls at {args.level} level; per level: stored+dropped/produced")
        for _ in range(args.runs):
            print(one_run(ports, args.calls, args.level), flush=True)
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
