"""Two processes, one trace: a client process calls a model-server process over HTTP on loopback.

    python examples/http_two_process.py --endpoint http://127.0.0.1:4318 [--level layer]

prints the trace id. The client starts the server (this file with `server`) as a subprocess,
sends a few requests and then closes the server's stdin, which stops it. The client's span for
each request puts its W3C trace context in the request headers (`agent.inject_headers`); the
server's handler span continues it (`agent.span_from_headers`), so the server's spans, its model
span and the layers below it, are children of the client's request span in one trace.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from opentelemetry.trace import SpanKind

from mlscope.agents import Agent, start_agent
from mlscope.cli.demo import IMAGE_SIZE, build_model


def serve(agent: Agent) -> None:
    """Answers POST /predict {"batch_size": n} with the classes of n random images until stdin
    closes; prints `port: N` once listening."""
    model = agent.trace_model(build_model(), name="democnn", framework="pytorch", version="1")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with agent.span_from_headers("POST /predict", self.headers, attributes={"http.route": "/predict"}):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with agent.span("preprocess", level="model"):
                    images = torch.rand(request["batch_size"], 3, IMAGE_SIZE, IMAGE_SIZE)
                with torch.inference_mode():
                    classes = model(images).argmax(dim=1).tolist()
                body = json.dumps({"classes": classes}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # keep stderr for errors
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"port: {server.server_address[1]}", flush=True)
    sys.stdin.read()  # the client closes our stdin when it is done
    server.shutdown()


def run_client(agent: Agent, endpoint: str, level: str, requests: int) -> str:
    """Starts the server, sends `requests` predictions; returns the trace id."""
    server = subprocess.Popen(
        [sys.executable, __file__, "server", "--endpoint", endpoint, "--level", level],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(server.stdout.readline().split(": ")[1])
        with agent.span("client-run") as root:
            for batch_size in range(1, requests + 1):
                with agent.span("POST /predict", kind=SpanKind.CLIENT, attributes={"server.port": port}):
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{port}/predict",
                        data=json.dumps({"batch_size": batch_size}).encode(),
                        headers=agent.inject_headers({"Content-Type": "application/json"}),
                    )
                    with urllib.request.urlopen(request, timeout=30) as response:
                        json.loads(response.read())
            return format(root.get_span_context().trace_id, "032x")
    finally:
        server.stdin.close()
        server.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", nargs="?", choices=("client", "server"), default="client")
    parser.add_argument("--endpoint", required=True, help="the collector's OTLP/HTTP URL")
    parser.add_argument("--level", default="layer")
    parser.add_argument("--requests", type=int, default=2)
    args = parser.parse_args()
    agent = start_agent(service=f"model-{args.role}", endpoint=args.endpoint, level=args.level)
    try:
        if args.role == "server":
            serve(agent)
        else:
            print(run_client(agent, args.endpoint, args.level, args.requests))
    finally:
        agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
