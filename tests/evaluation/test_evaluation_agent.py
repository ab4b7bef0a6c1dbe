"""EvaluationAgent: lost spans fail the command, unless something else already failed it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

from mlscope.conventions import AGENT_WRITER
from mlscope.evaluation import DeliveryFailed
from mlscope.evaluation.remote import Stopped
from mlscope.evaluation.runner import EvaluationAgent
from mlscope.evaluation.system import this_system


class Refusing(BaseHTTPRequestHandler):
    """A collector that answers every export with 400: the exporter gives up at once."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def traced(sender: EvaluationAgent) -> None:
    with sender.agent_at("model").span("stage"):
        pass


def test_lost_spans_fail_a_block_that_succeeded(refusing_collector: str) -> None:
    sender = EvaluationAgent(refusing_collector, this_system())
    with pytest.raises(DeliveryFailed, match=f"the collector at {refusing_collector} did not accept 1 spans"):
        with sender.closing():
            traced(sender)


def test_lost_deep_spans_count_whichever_writer_sent_them(refusing_collector: str) -> None:
    """The counting decorates the exporter: deep spans the agent's worker encodes and sends are
    counted as lost too, and the agent is the one start_agent gives users (its writer in its resource)."""
    sender = EvaluationAgent(refusing_collector, this_system())
    with pytest.raises(DeliveryFailed, match=f"the collector at {refusing_collector} did not accept 3 spans"):
        with sender.closing():
            agent = sender.agent_at("layer")
            assert agent.resource_attributes()[AGENT_WRITER] == agent.writer.value != "inline"
            agent.trace_model(nn.Sequential(nn.ReLU()), name="tiny")(torch.ones(1))  # predict, tiny, 0


@pytest.mark.parametrize("failure", [Stopped("SIGTERM"), RuntimeError("the job broke")], ids=["stopped", "error"])
def test_a_failure_in_the_block_wins_over_lost_spans(refusing_collector: str, failure: BaseException) -> None:
    # A predictor stopped by SIGTERM while the collector refused its spans must still stop: the
    # DeliveryFailed that closing would raise once replaced the Stopped, and the predictor went on.
    sender = EvaluationAgent(refusing_collector, this_system())
    with pytest.raises(type(failure)) as raised:
        with sender.closing():
            traced(sender)
            raise failure
    assert raised.value is failure
    assert sum(exporter.lost for exporter in sender._exporters) == 1  # closed: what was queued was sent
