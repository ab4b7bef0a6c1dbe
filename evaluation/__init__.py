"""Evaluations: predictors for PyTorch, TorchScript and ONNX Runtime behind one API, the
MLPerf-style scenarios, and the runner that sends each result to the collector as an
`mlscope.evaluation` span (stored as a row of the `evaluations` table); reports and figures.

    plan = Plan(manifests=(load_manifest("resnet18"),), frameworks=("pytorch", "onnxruntime"), batch_sizes=(1, 8))
    check_plan(plan)                          # bad input fails here, before anything is sent
    sender = EvaluationAgent(endpoint, this_system())
    with sender.closing():                    # then DeliveryFailed if the collector refused spans
        results = evaluate(plan, sender.agent_at, AssetCache())
"""

from __future__ import annotations

from .predictors import EXECUTION_PROVIDERS, PREDICTORS, Predictor, PredictorError, create_predictor
from .results import EvaluationResult
from .runner import DeliveryFailed, EvaluationAgent, Origin, Plan, check_plan, check_plan_frameworks, evaluate
from .scenarios import SCENARIOS
from .system import System, this_system

__all__ = [
    "DeliveryFailed", "EXECUTION_PROVIDERS", "EvaluationAgent", "EvaluationResult", "Origin", "PREDICTORS", "Plan", "Predictor",
    "PredictorError", "SCENARIOS", "System", "check_plan", "check_plan_frameworks", "create_predictor", "evaluate", "this_system",
]
