"""Agents: trace a run at the level the user picks and export it over OTLP."""

from .api import Agent, default_endpoint, start_agent

__all__ = ["Agent", "default_endpoint", "start_agent"]
