"""Imported by Python's `site` at start-up in processes that `mlscope run` starts (it puts this
folder first on PYTHONPATH): starts mlscope's tracing (mlscope.agents.bootstrap), after running
the sitecustomize this one shadows, if there is one. Never fails the program: if mlscope cannot
start (another interpreter, without mlscope installed), it says so in one line and steps aside."""

import importlib.machinery
import importlib.util
import os
import sys


def _chain() -> None:
    """Runs the next sitecustomize on sys.path, the one Python would have imported."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _start() -> None:
    try:
        from mlscope.agents.bootstrap import autoload
    except Exception as exc:
        print(f"mlscope: not tracing {sys.executable}: {exc}", file=sys.stderr)
        return
    try:
        autoload()
    except Exception as exc:  # e.g. a bad MLSCOPE_LEVEL: the program still runs, untraced
        print(f"mlscope: not tracing this process: {exc}", file=sys.stderr)


_chain()
_start()
del _chain, _start
