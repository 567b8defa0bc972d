"""Built-in architectures that load real checkpoints, and the project's own demo weights.

Each entry states the task, input size and preprocessing of the architecture, so that
``--model NAME --weights FILE`` is all a user types. Adding an architecture means adding an
``Architecture`` to ``ARCHITECTURES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from dgh_deploy.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

DEMO_WEIGHTS = Path(__file__).resolve().parent / "demo" / "cifar10_resnet20_demo.pt"
MOBILENET_WEIGHTS = Path(__file__).resolve().parent / "demo" / "cifar10_mobilenetv2_w05.pt"
COCO80_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Architecture:
    name: str
    factory: Callable[[], nn.Module]
    task: str
    imgsz: tuple[int, int]
    preprocessing: Preprocessing
    description: str
    default_weights: Path | None = None
    class_names: tuple[str, ...] | None = None
    # Rewrites applied to a copy of the model before export: same math, converter-friendly ops.
    export_form: Callable[[nn.Module], nn.Module] | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    extra: dict[str, Any] = field(default_factory=dict)  # copied to LoadedModel.extra (e.g. "stride")


def _cifar(depth: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from dgh_deploy.models.cifar_resnet import CifarResNet

        return CifarResNet(depth)

    return build


def _cifar_mobilenetv2() -> nn.Module:
    from dgh_deploy.models.cifar_mobilenetv2 import cifar_mobilenetv2

    return cifar_mobilenetv2()


def _cifar_export_form(model: nn.Module) -> nn.Module:
    from dgh_deploy.models.cifar_resnet import export_form

    return export_form(model)


_CIFAR_PRE = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD)
_YOLO_PRE = Preprocessing(resize="letterbox", pad_value=114)  # = models.yolo.YOLO_PREPROCESSING, without its import


def _yolov5n() -> nn.Module:
    from dgh_deploy.models.yolov5 import yolov5n

    return yolov5n()


def _yolov5_export_form(model: nn.Module) -> nn.Module:
    from dgh_deploy.models.yolov5 import split_head

    return split_head(model)  # type: ignore[arg-type]

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "cifar_resnet20", _cifar(20), "classify", (32, 32), _CIFAR_PRE,
            "CIFAR-10 ResNet-20 (He et al. 2016, option-A shortcuts); --weights resnet20-*.th",
            class_names=CIFAR10_CLASSES, export_form=_cifar_export_form,
        ),
        Architecture(
            "cifar_resnet56", _cifar(56), "classify", (32, 32), _CIFAR_PRE,
            "CIFAR-10 ResNet-56; --weights resnet56-*.th",
            class_names=CIFAR10_CLASSES, export_form=_cifar_export_form,
        ),
        Architecture(
            "demo", _cifar(20), "classify", (32, 32), _CIFAR_PRE,
            "the bundled demo: ResNet-20 trained by models/train_cifar.py on CIFAR-10 (87.7% top-1 "
            "on the JPEG test set); the default when --model is absent",
            default_weights=DEMO_WEIGHTS, class_names=CIFAR10_CLASSES, export_form=_cifar_export_form,
        ),
        Architecture(
            "cifar_mobilenetv2", _cifar_mobilenetv2, "classify", (32, 32), _CIFAR_PRE,
            "a depthwise classifier of the project's own, bundled: MobileNetV2 (width 0.5, inverted residuals, "
            "depthwise 3x3, ReLU6) trained by models/train_cifar.py on CIFAR-10 (81.3% top-1 on the JPEG test set)",
            default_weights=MOBILENET_WEIGHTS, class_names=CIFAR10_CLASSES,
        ),
        Architecture(
            "yolov5n", _yolov5n, "detect", (640, 640), _YOLO_PRE,
            "YOLOv5n v6.1 COCO detector, anchor-based head on Ultralytics' yolov5n.yaml blocks; "
            "--weights yolov5n-coco-v6.1.pt (a plain dict: state_dict, config, names, stride)",
            class_names=COCO80_CLASSES, export_form=_yolov5_export_form, extra={"stride": 32},
        ),
    )
}
