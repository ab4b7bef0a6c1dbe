"""A queued job's request, pure: what `evaluate --remote` sends is what a predictor parses back,
and every bad field is named in one error."""

from __future__ import annotations

import json

import pytest

from mlscope.evaluation import Plan
from mlscope.evaluation.jobs import JobError, JobRequest, ManifestText, parse_job_request, parse_where
from mlscope.manifests import ModelSources, manifest_from_text, read_manifest

DIGITS = ManifestText(*read_manifest("digits"))


def request_json(**plan: object) -> dict:
    return {"manifests": [{"source": DIGITS.source, "text": DIGITS.text}],
            "plan": {"frameworks": ["pytorch"], "batch_sizes": [1], **plan}}


def test_a_request_survives_json_both_ways() -> None:
    plan = Plan(manifests=(manifest_from_text(DIGITS.source, DIGITS.text),), frameworks=("pytorch", "onnxruntime"),
                batch_sizes=(1, 8), scenarios=("single-stream", "server"), levels=("model", "layer"), repetitions=7,
                warmup=0, accuracy=True, server_qps=12.5, server_bound_ms=None, seed=3)
    sent = JobRequest((DIGITS,), plan, parse_where(["system=gpu-box", "rack = a"]))
    received = parse_job_request(json.loads(json.dumps(sent.to_json())))
    assert received == sent
    assert received.where == (("rack", "a"), ("system", "gpu-box"))


def test_defaults_fill_what_the_plan_leaves_out() -> None:
    plan = parse_job_request(request_json()).plan
    assert (plan.scenarios, plan.levels, plan.repetitions, plan.execution_provider) == (
        ("single-stream",), ("model",), 20, "cpu")


@pytest.mark.parametrize(("body", "error"), [
    ([], "the request must be a JSON object"),
    ({"plan": {}}, "manifests: expected a non-empty list"),
    ({**request_json(), "priority": 1}, "priority: unknown field"),
    ({"manifests": [{"text": 5}], "plan": {}}, "manifests[0]: expected {source: string, text: string}"),
    ({"manifests": [{"source": "m.yaml", "text": "name: [unclosed"}], "plan": {}}, "m.yaml: not valid YAML"),
    ({"manifests": [{"source": "m.yaml", "text": "name: x\n"}], "plan": {}}, "m.yaml: framework: missing"),
    (request_json(frameworks=["caffe"]), "plan.frameworks: unknown 'caffe'"),
    (request_json(batch_sizes=[0]), "plan.batch_sizes: expected a non-empty list of positive integers"),
    (request_json(batch_sizes=[True]), "plan.batch_sizes: expected a non-empty list of positive integers"),
    (request_json(levels=["deep"]), "plan.levels: unknown level 'deep'"),
    (request_json(repetitions=0), "plan.repetitions: expected an integer of at least 1"),
    (request_json(accuracy="yes"), "plan.accuracy: expected true or false"),
    (request_json(execution_provider="tpu"), "plan.execution_provider: expected one of"),
    (request_json(server_qps=-1), "plan.server_qps: expected a positive number or null"),
    (request_json(turbo=True), "plan.turbo: unknown field"),
    ({**request_json(), "where": {"System": "x"}}, "where: bad key 'System'"),
    ({**request_json(), "where": {"system": ""}}, "where.system: expected a non-empty string"),
])
def test_bad_requests_name_the_field(body: object, error: str) -> None:
    with pytest.raises(JobError) as raised:
        parse_job_request(body)
    assert str(raised.value).startswith(error), str(raised.value)


def test_a_framework_the_model_cannot_run_in_is_refused() -> None:
    onnx_only = DIGITS.text.replace("builder: mlscope.manifests.models:digits_mlp", "url: http://127.0.0.1:1/m.onnx\n"
                                    "  sha256: " + "a" * 64 + "\n  format: onnx").replace("name: pytorch", "name: onnxruntime")
    onnx_only = onnx_only.replace("  train: {epochs: 30, learning_rate: 0.003, seed: 0}\n", "")
    body = {"manifests": [{"source": "onnx.yaml", "text": onnx_only}], "plan": {"frameworks": ["pytorch"], "batch_sizes": [1]}}
    with pytest.raises(JobError, match=r"^plan.frameworks: onnx.yaml: a onnxruntime model runs in onnxruntime, not pytorch"):
        parse_job_request(body)


def test_where_pairs_need_an_equals_sign() -> None:
    with pytest.raises(JobError, match=r"^label: 'gpu' must be key=value"):
        parse_where(["gpu"], "label")


def test_variables_travel_as_written_and_are_expanded_where_the_job_runs() -> None:
    text = DIGITS.text.replace("samples: 450", "samples: ${SAMPLES:-450}").replace(
        "description: A two-layer", "description: ${MODEL_NOTE} A two-layer")
    body = {"manifests": [{"source": "digits.yaml", "text": text}], "plan": {"frameworks": ["pytorch"], "batch_sizes": [1]}}
    queued = parse_job_request(body)  # where it is queued: defaults, and no one's environment
    assert queued.to_json()["manifests"][0]["text"] == text
    assert queued.plan.manifests[0].dataset.samples == 450
    assert queued.plan.manifests[0].description.startswith("${MODEL_NOTE} ")
    ran = parse_job_request(body, {"MODEL_NOTE": "shared", "SAMPLES": "10"})
    assert (ran.plan.manifests[0].description.split()[0], ran.plan.manifests[0].dataset.samples) == ("shared", 10)
    with pytest.raises(JobError, match="environment variable MODEL_NOTE is not set here"):
        parse_job_request(body, {})


def test_a_predictor_refuses_a_manifest_naming_code() -> None:
    body = {"manifests": [{"source": "job.yaml", "text": DIGITS.text.replace("mlscope.manifests.models:digits_mlp", "os:abort")}],
            "plan": {"frameworks": ["pytorch"], "batch_sizes": [1]}}
    assert parse_job_request(body).plan.manifests[0].model.builder == "os:abort"  # well-formed; the predictor decides
    with pytest.raises(JobError, match="job.yaml: model.builder: builder 'os:abort' is not allowed"):
        parse_job_request(body, {}, ModelSources.remote())
    parse_job_request(body, {}, ModelSources.remote(["os:abort"]))
