"""Resolve ``--model`` / ``--weights`` into a ready model that knows its own input.

Accepted forms of ``--model``:

* a built-in architecture name (``dgh-deploy models`` lists them), with ``--weights``;
* ``torchvision:NAME`` (or a bare torchvision classifier name) with a ``--weights`` file;
* an Ultralytics checkpoint (``.pt``) or model YAML (``.yaml``): a detector;
* ``path/to/file.py:factory`` for anything else: ``factory()`` returns an ``nn.Module``.
  Optional attributes on it override the defaults: ``input_size`` (int or (h, w)),
  ``mean``/``std`` (on 0..1 pixels), ``task`` (``classify``/``detect``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

TASKS = ("classify", "detect")


@dataclass
class LoadedModel:
    """A float32 model in eval mode on the CPU, with everything needed to feed it."""

    module: nn.Module
    name: str
    task: str
    imgsz: tuple[int, int]
    preprocessing: Preprocessing
    weights: str | None = None
    class_names: tuple[str, ...] | None = None
    export_form: Callable[[nn.Module], nn.Module] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of the weights and input geometry: the key for cached calibration sets."""
        h = hashlib.sha256(f"{self.name}|{self.task}|{self.imgsz}|{self.preprocessing}".encode())
        for k, v in sorted(self.module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def for_export(self) -> nn.Module:
        """A copy of the model with the export rewrites applied (the original stays untouched)."""
        module = copy.deepcopy(self.module).eval()
        return self.export_form(module) if self.export_form else module

    def dummy_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 3, *self.imgsz)


def load_model(
    model: str | None = None,
    weights: str | None = None,
    task: str | None = None,
    imgsz: int | tuple[int, int] | None = None,
) -> LoadedModel:
    """Load and validate a model; raise :class:`DGHError` with a fix for anything wrong."""
    from dgh_deploy.models import ARCHITECTURES

    if task is not None and task not in TASKS:
        raise DGHError(f"unknown task '{task}'", f"use --task {' or '.join(TASKS)}")
    spec = model or "demo"
    if spec in ARCHITECTURES:
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
    if task is not None and task != loaded.task:
        raise DGHError(
            f"--task {task} given, but '{spec}' is a {loaded.task} model",
            f"use --task {loaded.task} or drop --task",
        )
    if imgsz is not None:
        loaded.imgsz = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)  # type: ignore[assignment]
    stride = int(loaded.extra.get("stride", 1))
    if any(side % stride for side in loaded.imgsz):
        raise DGHError(
            f"image size {loaded.imgsz[0]}x{loaded.imgsz[1]} is not a multiple of the model's stride {stride}",
            f"use an --imgsz divisible by {stride}, e.g. {max(stride, round(loaded.imgsz[0] / stride) * stride)}",
        )
    check_finite(loaded.module, loaded.weights or spec)
    check_accepts_images(loaded)
    return loaded


def check_finite(module: nn.Module, source: str) -> None:
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DGHError(
                f"weights in {source} hold NaN or Inf values (first in '{name}')",
                "re-export the checkpoint from a healthy training run",
            )


def check_accepts_images(model: LoadedModel) -> None:
    """One forward pass on a blank image: catches non-image models and wrong sizes early."""
    h, w = model.imgsz
    if h < 1 or w < 1:
        raise DGHError(f"image size {h}x{w} is not valid", "pass a positive --imgsz")
    try:
        with torch.no_grad():
            model.module(model.dummy_input())
    except Exception as exc:
        reason = exc_reason(exc, 160)
        raise DGHError(
            f"model '{model.name}' does not take a 1x3x{h}x{w} image ({reason})",
            "check --imgsz, or that the model is an image model with 3 input channels",
        ) from exc


def read_checkpoint(path: str) -> Any:
    p = Path(path)
    if not p.exists():
        raise DGHError(f"weights file '{path}' not found", "check the --weights path")
    if not p.is_file():
        raise DGHError(f"weights path '{path}' is not a file", "pass the checkpoint file, not a folder")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = exc_reason(exc, 120)
        raise DGHError(
            f"cannot read weights file '{path}' ({reason})",
            "pass a checkpoint saved with torch.save (a state_dict, or a dict holding 'state_dict')",
        ) from exc


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
        raise DGHError(f"importing '{file}' failed ({type(exc).__name__}: {exc})", "fix the model file") from exc
    factory = getattr(mod, func, None)
    if not callable(factory):
        raise DGHError(f"'{file}' has no function '{func}'", "name a function that returns an nn.Module")
    net = factory()
    if not isinstance(net, nn.Module):
        raise DGHError(f"'{spec}' returned {type(net).__name__}, not an nn.Module", "return the model")
    if weights is not None:
        load_state(net, extract_state_dict(read_checkpoint(weights), weights), weights, spec)
    size = getattr(net, "input_size", 224)
    imgsz = (size, size) if isinstance(size, int) else tuple(size)
    task = getattr(net, "task", "classify")
    pre = Preprocessing(
        mean=tuple(getattr(net, "mean", IMAGENET_MEAN)), std=tuple(getattr(net, "std", IMAGENET_STD))
    )
    return LoadedModel(
        module=net.float().eval(), name=f"{path.stem}:{func}", task=task, imgsz=imgsz,  # type: ignore[arg-type]
        preprocessing=pre, weights=weights,
    )


def count_bn_layers(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def require_batchnorm(model: LoadedModel, why: str) -> None:
    if count_bn_layers(model.module) == 0:
        raise DGHError(
            f"model '{model.name}' has no BatchNorm layer, which {why} needs",
            "use --calib real:PATH or --calib noise, or a model with BatchNorm (fold nothing before export)",
        )


