"""Predictors on the digits manifest: the classifier trained on first use scores >= 90% top-1
on held-out digits in PyTorch and in ONNX Runtime, the three predictors agree, and every stage
is a model-level span."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlscope.agents import Agent
from mlscope.evaluation import PREDICTORS, Predictor, PredictorError, create_predictor
from mlscope.evaluation.stats import divergence, top_k_accuracy
from mlscope.manifests import AssetCache, load_manifest, preprocessed_dataset, torch_weights
from mlscope.manifests.datasets import load_dataset

MANIFEST = load_manifest("digits")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> AssetCache:
    return AssetCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def predictors(cache: AssetCache, spans: InMemorySpanExporter) -> Iterator[dict[str, Predictor]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    agent = Agent(provider, "model")
    loaded = {name: create_predictor(name, MANIFEST, agent, cache) for name in PREDICTORS}
    for predictor in loaded.values():
        predictor.load()
    yield loaded
    for predictor in loaded.values():
        predictor.close()


def _scores(predictor: Predictor, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([predictor.predict(inputs[i:i + 64]) for i in range(0, len(inputs), 64)])


@pytest.mark.parametrize("framework", ["pytorch", "onnxruntime"])
def test_trained_classifier_reaches_90_percent(predictors: dict[str, Predictor], framework: str) -> None:
    inputs, labels = preprocessed_dataset(MANIFEST)
    assert labels is not None and len(labels) == 450
    assert top_k_accuracy(_scores(predictors[framework], inputs), labels, 1) >= 0.90


def test_the_three_predictors_agree(predictors: dict[str, Predictor]) -> None:
    inputs, _ = preprocessed_dataset(MANIFEST)
    reference = _scores(predictors["pytorch"], inputs)
    for framework in ("torchscript", "onnxruntime"):
        result = divergence(reference, _scores(predictors[framework], inputs))
        assert result.max_abs_diff < 1e-4 and result.top1_agreement == 1.0, framework


def test_stages_are_model_level_spans(predictors: dict[str, Predictor], spans: InMemorySpanExporter) -> None:
    spans.clear()
    predictor = predictors["onnxruntime"]
    raw = load_dataset(MANIFEST.dataset).inputs[:3]
    top5 = predictor.postprocess(predictor.predict(predictor.preprocess(raw)))
    assert [len(classes) for classes in top5] == [5, 5, 5]
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert set(finished) == {"preprocess", "predict", "postprocess"}
    assert all(span.attributes["mlscope.level"] == "model" for span in finished.values())
    assert finished["predict"].attributes["mlscope.framework.name"] == "onnxruntime"
    assert finished["predict"].attributes["mlscope.batch_size"] == 3


def test_cached_weights_are_reused(predictors: dict[str, Predictor], cache: AssetCache) -> None:
    weights = next(cache.directory.rglob("weights.pt"))
    before = weights.stat().st_mtime_ns
    torch_weights(MANIFEST, cache)
    assert weights.stat().st_mtime_ns == before  # verified, not trained again


def test_a_missing_execution_provider_names_the_available_ones(cache: AssetCache) -> None:
    agent = Agent(TracerProvider(), "model")
    with pytest.raises(PredictorError, match="no TensorrtExecutionProvider here; available: .*CPUExecutionProvider"):
        create_predictor("onnxruntime", MANIFEST, agent, cache, "tensorrt")
    with pytest.raises(PredictorError, match="available: cpu"):
        create_predictor("pytorch", MANIFEST, agent, cache, "rocm")
