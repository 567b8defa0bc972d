"""Generation checkpoints: written atomically, refused when written for other settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.errors import DGHError


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, expected_hash: str, device: torch.device) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint to resume from."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise DGHError(
            f"generation checkpoint '{path}' cannot be read ({type(exc).__name__})",
            "delete it to start over, or run without --resume",
        ) from exc
    if not isinstance(state, dict) or state.get("settings_hash") != expected_hash:
        raise DGHError(
            f"generation checkpoint '{path}' was written for another model or other generation settings",
            "resume with the same model, --calib, --n-images, --iters and --seed, or delete the checkpoint",
        )
    return state
