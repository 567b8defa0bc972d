"""dgh-deploy: data-free INT8 deployment for edge vision.

DGH (Dikstein et al., WACV 2025) generates calibration images from the model itself; each
hardware target's calibrator consumes them; the result is verified on the target's runtime.

Python API (mirrors the CLI)::

    import dgh_deploy
    calib = dgh_deploy.generate("cifar_resnet20", weights="resnet20.th", n_images=256)
    report = dgh_deploy.deploy(target="tflite-int8", model="cifar_resnet20", weights="resnet20.th")
    result = dgh_deploy.deploy(model=YOLO("best.pt"), imgsz=(384, 640), layout="ultralytics")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dgh_deploy.api import DeployResult
    from dgh_deploy.calibration import CalibrationSet


def generate(model: Any = None, **kwargs: Any) -> CalibrationSet:
    """Generate a calibration set; see :func:`dgh_deploy.api.generate`."""
    from dgh_deploy.api import generate as _generate

    return _generate(model, **kwargs)


def deploy(target: str = "tflite-int8", **kwargs: Any) -> DeployResult:
    """Run the whole job; see :func:`dgh_deploy.api.deploy`."""
    from dgh_deploy.api import deploy as _deploy

    return _deploy(target, **kwargs)


__all__ = ["__version__", "deploy", "generate"]
