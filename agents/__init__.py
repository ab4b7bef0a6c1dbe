"""Agents: trace a run at the level the user picks and export it over OTLP."""

from .api import Agent, default_endpoint, start_agent
from .propagation import extract_env, extract_headers, inject_env, inject_headers

__all__ = ["Agent", "default_endpoint", "start_agent", "extract_env", "extract_headers", "inject_env", "inject_headers"]
