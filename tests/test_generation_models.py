"""Tiny models shared by the generation, baseline and sim tests (no assets needed; no tests here)."""

from bench.tiny_models import as_loaded, tiny_bn_net

__all__ = ["as_loaded", "tiny_bn_net"]
