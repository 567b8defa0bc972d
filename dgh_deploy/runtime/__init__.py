"""Runners: one per runtime, one interface (as in Polygraphy). Heavy imports stay inside each runner."""

from dgh_deploy.runtime.base import Runner, TorchRunner

__all__ = ["Runner", "TorchRunner"]
