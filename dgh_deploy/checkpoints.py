"""Reading a user's checkpoint: one clear error for a missing, unreadable or mismatched file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgh_deploy.errors import DGHError, exc_reason


def check_finite(module: nn.Module, source: str) -> None:
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DGHError(
                f"weights in {source} hold NaN or Inf values (first in '{name}')",
                "re-export the checkpoint from a healthy training run",
            )


def read_checkpoint(path: str) -> Any:
    p = Path(path)
    if not p.exists():
        raise DGHError(f"weights file '{path}' not found", "check the --weights path")
    if not p.is_file():
        raise DGHError(f"weights path '{path}' is not a file", "pass the checkpoint file, not a folder")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DGHError(
            f"cannot read weights file '{path}' ({checkpoint_problem(exc)})",
            "pass a checkpoint saved with torch.save (a state_dict, or a dict holding 'state_dict')",
        ) from exc


def checkpoint_problem(exc: BaseException) -> str:
    """What torch.load's failure means for the user, in a few words (its own message runs to a page)."""
    text = str(exc)
    if "Weights only load failed" in text:
        if "Unsupported global" in text or "GLOBAL" in text:
            return "it holds Python objects besides tensors, which a safe load refuses"
        return "it is not a PyTorch checkpoint, or it is damaged"
    if isinstance(exc, EOFError) or "zip archive" in text or "central directory" in text:
        return "the file is truncated or damaged"
    return exc_reason(exc, 120)


def extract_state_dict(ckpt: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in ckpt and isinstance(ckpt[key], dict):
                ckpt = ckpt[key]
                break
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in ckpt.items()}
    raise DGHError(f"'{path}' holds no state_dict", "save the model with torch.save(model.state_dict(), path)")


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str, arch: str) -> None:
    own = module.state_dict()
    # Checkpoints from before PyTorch 0.4.1 lack BN's num_batches_tracked; it does not affect eval.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label} {len(keys)} (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise DGHError(
            f"weights '{path}' do not fit architecture '{arch}': {detail}",
            "pass the checkpoint trained for this architecture, or the matching --model",
        )
    module.load_state_dict(state, strict=False)
