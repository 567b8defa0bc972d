"""Resolve ``--model`` / ``--weights`` into a ready model that knows its own input.

Accepted forms of ``--model``:

* a built-in architecture name (``dgh-deploy models`` lists them), with ``--weights``;
* ``torchvision:NAME`` (or a bare torchvision classifier name) with a ``--weights`` file;
* an Ultralytics checkpoint (``.pt``) or model YAML (``.yaml``): a detector;
* ``path/to/file.py:factory`` for anything else: ``factory()`` returns an ``nn.Module``.
  Optional attributes on it override the defaults: ``input_size`` (int or (h, w)),
  ``mean``/``std`` (on 0..1 pixels), ``task`` (``classify``/``detect``). A detector states the
  detector protocol (:mod:`dgh_deploy.tasks.detector`: ``head_maps``, ``decode`` and a few attributes).

From Python, ``model`` may also be the object itself: an Ultralytics ``YOLO`` or
``DetectionModel``, a built-in detector, or any ``nn.Module`` (read like a factory's result).
The job works on a copy: the caller's object is never changed.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dgh_deploy.checkpoints import check_finite, extract_state_dict, load_state, read_checkpoint
from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel, check_accepts_images
from dgh_deploy.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

TASKS = ("classify", "detect")


def load_model(
    model: str | nn.Module | None = None,
    weights: str | None = None,
    task: str | None = None,
    imgsz: int | Sequence[int] | None = None,
) -> LoadedModel:
    """Load and validate a model; raise :class:`DGHError` with a fix for anything wrong."""
    from dgh_deploy.models import ARCHITECTURES

    if task is not None and task not in TASKS:
        raise DGHError(f"unknown task '{task}'", f"use --task {' or '.join(TASKS)}")
    size = image_size(imgsz)
    spec = model_label(model)
    if isinstance(model, nn.Module):
        loaded = _load_object(model, weights)
    elif spec in ARCHITECTURES:
        loaded = _load_builtin(ARCHITECTURES[spec], weights)
    elif ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        loaded = _load_factory(spec, weights)
    elif spec.endswith((".pt", ".yaml", ".yml")):
        from dgh_deploy.models.yolo import load_ultralytics

        loaded = load_ultralytics(spec, weights)
    elif spec.startswith("torchvision:") or _is_torchvision_name(spec):
        loaded = _load_torchvision(spec.removeprefix("torchvision:"), weights)
    else:
        known = ", ".join(sorted(ARCHITECTURES))
        raise DGHError(
            f"unknown model '{spec}'",
            f"use a built-in name ({known}), torchvision:NAME, an Ultralytics .pt/.yaml, or file.py:factory",
        )
    if task == "detect" and loaded.task != "detect":
        from dgh_deploy.tasks.detector import PROTOCOL_FIX

        raise DGHError(f"--task detect given, but '{spec}' is not a detector (it has no head_maps or decode)",
                       PROTOCOL_FIX)
    if task is not None and task != loaded.task:
        raise DGHError(
            f"--task {task} given, but '{spec}' is a {loaded.task} model",
            f"use --task {loaded.task} or drop --task",
        )
    if size is not None:
        loaded.imgsz = size
    stride = int(loaded.extra.get("stride", 1))
    if any(side % stride for side in loaded.imgsz):
        raise DGHError(
            f"image size {loaded.imgsz[0]}x{loaded.imgsz[1]} is not a multiple of the model's stride {stride}",
            f"use an --imgsz divisible by {stride}, e.g. {max(stride, round(loaded.imgsz[0] / stride) * stride)}",
        )
    check_finite(loaded.module, loaded.weights or spec)
    check_accepts_images(loaded)
    return loaded


def image_size(imgsz: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``imgsz`` as (h, w): an int is square; (h, w) is a letterboxed rectangle (detectors)."""
    if imgsz is None:
        return None
    if isinstance(imgsz, int) and not isinstance(imgsz, bool):
        pair: tuple[Any, ...] = (imgsz, imgsz)
    elif isinstance(imgsz, Sequence) and not isinstance(imgsz, str) and len(imgsz) == 2:
        pair = tuple(imgsz)
    else:
        raise DGHError(f"imgsz {imgsz!r} is not an int or (h, w)", "pass imgsz=640 or imgsz=(384, 640)")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):  # sizes < 1: check_numbers'
        raise DGHError(f"imgsz {imgsz!r} is not made of whole numbers", "pass e.g. imgsz=(384, 640)")
    return pair[0], pair[1]


def model_label(model: str | nn.Module | None) -> str:
    """What the report and messages call ``model``: its spec, or an object's class."""
    if isinstance(model, nn.Module):
        return f"<{type(model).__name__} object>"
    return str(model) if model else "demo"  # a str or a Path


def _load_object(obj: nn.Module, weights: str | None) -> LoadedModel:
    """A model passed as an object: Ultralytics' (a YOLO or its DetectionModel), a built-in detector, or
    any nn.Module; loaded from a copy."""
    if weights is not None:
        raise DGHError("weights given with a model object", "load them into the object, or pass the model as a path")
    inner = _ultralytics_model(obj)
    if inner is not None:
        from dgh_deploy.models.yolo import loaded_ultralytics

        ckpt = getattr(obj, "ckpt_path", None) or None
        yaml_file = (getattr(inner, "yaml", None) or {}).get("yaml_file")
        name = Path(str(ckpt or yaml_file or type(inner).__name__)).stem
        return loaded_ultralytics(copy.deepcopy(inner), name, str(ckpt) if ckpt else None)
    net = copy.deepcopy(obj)
    from dgh_deploy.models.yolo import YOLO_PREPROCESSING, YoloDeploy

    if isinstance(net, YoloDeploy):
        from dgh_deploy.models.yolov5 import YOLOv5Detector, split_head

        return LoadedModel(module=net.float().eval(), name=type(net).__name__, task="detect", imgsz=(640, 640),
                           preprocessing=YOLO_PREPROCESSING, extra={"stride": net.max_stride},
                           export_form=split_head if isinstance(net, YOLOv5Detector) else None)  # type: ignore[arg-type]
    return _from_module(net, type(net).__name__, None)


def _ultralytics_model(obj: nn.Module) -> nn.Module | None:
    """The DetectionModel inside an Ultralytics ``YOLO`` object (or the model itself); None if not Ultralytics'."""
    if not type(obj).__module__.startswith("ultralytics."):
        return None
    from ultralytics.nn.tasks import BaseModel

    if isinstance(obj, BaseModel):
        return obj
    inner = getattr(obj, "model", None)
    if not isinstance(inner, BaseModel):
        raise DGHError(f"this Ultralytics object holds {type(inner).__name__} '{inner}', not a PyTorch model",
                       "pass YOLO('best.pt') (or the .pt path), not an exported file")
    return inner


def _load_builtin(arch: Any, weights: str | None) -> LoadedModel:
    path = weights or (str(arch.default_weights) if arch.default_weights else None)
    if path is None:
        raise DGHError(f"model '{arch.name}' needs weights", f"pass --weights FILE ({arch.description})")
    module = arch.factory()
    load_state(module, extract_state_dict(read_checkpoint(path), path), path, arch.name)
    return LoadedModel(
        module=module.float().eval(), name=arch.name, task=arch.task, imgsz=arch.imgsz,
        preprocessing=arch.preprocessing, weights=path, class_names=arch.class_names,
        export_form=arch.export_form, extra=dict(arch.extra),
    )


def _is_torchvision_name(name: str) -> bool:
    if not name.isidentifier():
        return False
    import torchvision.models as tvm

    return name in tvm.list_models(module=tvm)


def _load_torchvision(name: str, weights: str | None) -> LoadedModel:
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise DGHError(f"'{name}' is not a torchvision classifier", "see torchvision.models.list_models()")
    if weights is None:
        raise DGHError(
            f"torchvision model '{name}' needs a weights file (nothing is downloaded)",
            "pass --weights FILE with its state_dict",
        )
    module = tvm.get_model(name, weights=None)
    load_state(module, extract_state_dict(read_checkpoint(weights), weights), weights, name)
    return LoadedModel(
        module=module.float().eval(), name=name, task="classify", imgsz=(224, 224),
        preprocessing=Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD), weights=weights,
    )


def _load_factory(spec: str, weights: str | None) -> LoadedModel:
    file, func = spec.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise DGHError(f"model file '{file}' not found", "pass --model path/to/file.py:factory")
    module_spec = importlib.util.spec_from_file_location(f"_dgh_user_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    mod = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(mod)
    except Exception as exc:
        raise DGHError(f"importing '{file}' failed ({type(exc).__name__}: {exc_reason(exc, 160)})",
                       "fix the model file") from exc
    factory = getattr(mod, func, None)
    if not callable(factory):
        raise DGHError(f"'{file}' has no function '{func}'", "name a function that returns an nn.Module")
    try:
        net = factory()
    except Exception as exc:  # the user's code: its failure is theirs to fix, in one line
        raise DGHError(f"'{spec}' raised {type(exc).__name__}: {exc_reason(exc, 160)}",
                       "fix the factory function") from exc
    if not isinstance(net, nn.Module):
        raise DGHError(f"'{spec}' returned {type(net).__name__}, not an nn.Module", "return the model")
    if weights is not None:
        load_state(net, extract_state_dict(read_checkpoint(weights), weights), weights, spec)
    return _from_module(net, f"{path.stem}:{func}", weights)


def _from_module(net: nn.Module, name: str, weights: str | None) -> LoadedModel:
    """A plain nn.Module, its input read from optional attributes (``input_size``, ``mean``, ``std``, ``task``);
    a detector through the detector protocol (:mod:`dgh_deploy.tasks.detector`)."""
    from dgh_deploy.tasks.detector import load_detector, states_detector

    if states_detector(net):
        return load_detector(net, name, weights)
    size = getattr(net, "input_size", 224)
    imgsz = (size, size) if isinstance(size, int) else tuple(size)
    task = getattr(net, "task", "classify")
    pre = Preprocessing(
        mean=tuple(getattr(net, "mean", IMAGENET_MEAN)), std=tuple(getattr(net, "std", IMAGENET_STD))
    )
    return LoadedModel(
        module=net.float().eval(), name=name, task=task, imgsz=imgsz,  # type: ignore[arg-type]
        preprocessing=pre, weights=weights,
    )
