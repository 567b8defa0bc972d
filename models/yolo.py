"""Ultralytics detectors: checkpoints (``.pt``) and model YAMLs, loaded without any download."""

from __future__ import annotations

from pathlib import Path

from dgh_deploy.errors import DGHError
from dgh_deploy.loading import LoadedModel
from dgh_deploy.preprocessing import Preprocessing

YOLO_PREPROCESSING = Preprocessing(resize="letterbox", pad_value=114)  # pixels / 255, no mean/std
DEFAULT_IMGSZ = 640


def load_ultralytics(spec: str, weights: str | None = None) -> LoadedModel:
    """An Ultralytics ``.pt`` checkpoint, or a model YAML (a path, or a name Ultralytics ships)."""
    import torch

    if spec.endswith(".pt"):
        path = Path(spec)
        if not path.is_file():
            raise DGHError(f"model file '{spec}' not found", "check the --model path")
        from ultralytics.nn.tasks import load_checkpoint

        try:
            module, _ = load_checkpoint(str(path), device="cpu", inplace=True, fuse=False)
        except Exception as exc:
            raise DGHError(
                f"cannot read Ultralytics checkpoint '{spec}' ({type(exc).__name__}: {str(exc)[:120]})",
                "pass a .pt saved by Ultralytics (model.save / a training run)",
            ) from exc
    else:
        from ultralytics.nn.tasks import DetectionModel

        if not Path(spec).is_file() and not _ships_yaml(spec):
            raise DGHError(f"model YAML '{spec}' not found", "pass a YAML path or a name Ultralytics ships")
        try:
            module = DetectionModel(cfg=spec, verbose=False)
        except Exception as exc:
            raise DGHError(f"cannot build a model from '{spec}' ({str(exc)[:120]})", "check the YAML") from exc
        if weights:
            from dgh_deploy.loading import extract_state_dict, load_state, read_checkpoint

            load_state(module, extract_state_dict(read_checkpoint(weights), weights), weights, spec)
    module = module.float().eval()
    task = getattr(module, "task", "detect")
    if task != "detect":
        raise DGHError(f"'{spec}' is an Ultralytics {task} model", "only detection models are supported")
    names = getattr(module, "names", None)
    stride = int(max(getattr(module, "stride", torch.tensor([32])).tolist()))
    return LoadedModel(
        module=module, name=Path(spec).stem, task="detect", imgsz=(DEFAULT_IMGSZ, DEFAULT_IMGSZ),
        preprocessing=YOLO_PREPROCESSING, weights=weights or (spec if spec.endswith(".pt") else None),
        class_names=tuple(names.values()) if isinstance(names, dict) else None, extra={"stride": stride},
    )


def _ships_yaml(name: str) -> bool:
    try:
        from ultralytics.nn.tasks import yaml_model_load

        yaml_model_load(name)
        return True
    except Exception:
        return False
