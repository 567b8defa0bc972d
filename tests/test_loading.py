"""Model loading: every accepted form, and every bad input named with its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import count_bn_layers, require_batchnorm
from dgh_deploy.loading import load_model
from dgh_deploy.models import DEMO_WEIGHTS

USER_MODELS = '''
import torch
from torch import nn

def no_bn():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

def fixed_size():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    m.input_size = 16
    m.mean, m.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return m

def not_image():
    return nn.Linear(10, 2)

def not_a_module():
    return 42
'''


@pytest.fixture(scope="module")
def user_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("user") / "user_models.py"
    path.write_text(USER_MODELS)
    return path


def test_default_is_the_bundled_demo() -> None:
    m = load_model()
    assert m.name == "demo" and m.task == "classify" and m.imgsz == (32, 32)
    assert Path(m.weights or "") == DEMO_WEIGHTS
    assert DEMO_WEIGHTS.stat().st_size < 2_000_000
    assert count_bn_layers(m.module) == 19


def test_builtin_with_shared_weights(r20_weights: str, r56_weights: str) -> None:
    m20 = load_model("cifar_resnet20", r20_weights)
    m56 = load_model("cifar_resnet56", r56_weights)
    assert count_bn_layers(m20.module) == 19 and count_bn_layers(m56.module) == 55
    assert m20.fingerprint() != m56.fingerprint()


def test_export_form_is_exact_and_leaves_the_original_alone() -> None:
    m = load_model()
    x = torch.randn(4, 3, 32, 32)
    exported = m.for_export()
    with torch.no_grad():
        assert torch.equal(m.module(x), exported(x))
    assert not any(getattr(mod, "use_conv", False) for mod in m.module.modules())
    assert any(getattr(mod, "use_conv", False) for mod in exported.modules())


def test_factory_carries_its_preprocessing(user_file: Path) -> None:
    m = load_model(f"{user_file}:fixed_size")
    assert m.imgsz == (16, 16) and m.preprocessing.mean == (0.5, 0.5, 0.5)


def test_ultralytics_yaml_builds_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No socket may connect while the model is built: a YAML needs no download."""
    import socket

    attempts: list[object] = []

    def blocked(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    m = load_model("yolov8n.yaml", imgsz=64)
    assert m.task == "detect" and m.imgsz == (64, 64) and m.preprocessing.resize == "letterbox"
    assert attempts == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "resnet_9000"}, "unknown model 'resnet_9000'"),
        ({"model": "cifar_resnet20"}, "needs weights"),
        ({"model": "cifar_resnet20", "weights": "/nonexistent/w.th"}, "not found"),
        ({"model": "cifar_resnet56", "weights": str(DEMO_WEIGHTS)}, "do not fit architecture 'cifar_resnet56'"),
        ({"model": "demo", "task": "detect"}, "is not a detector"),
        ({"model": "demo", "imgsz": 0}, "not valid"),
        ({"model": "yolov8n.yaml", "imgsz": 100}, "not a multiple of the model's stride 32"),
        ({"model": "torchvision:resnet18"}, "needs a weights file"),
    ],
)
def test_bad_input_names_problem_and_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(DGHError) as err:
        load_model(**kwargs)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert err.value.fix, "every error must say what to do"


def test_corrupt_weights(tmp_path: Path) -> None:
    bad = tmp_path / "w.th"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DGHError, match="cannot read weights file"):
        load_model("cifar_resnet20", str(bad))


def test_nan_weights(tmp_path: Path) -> None:
    state = torch.load(DEMO_WEIGHTS, weights_only=True)["state_dict"]
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(DGHError, match=r"NaN or Inf values \(first in 'layer2.0.conv1.weight'\)"):
        load_model("cifar_resnet20", str(path))


def test_user_file_errors(user_file: Path) -> None:
    with pytest.raises(DGHError, match="does not take a 1x3x32x32 image"):
        load_model(f"{user_file}:fixed_size", imgsz=32)
    with pytest.raises(DGHError, match="does not take a 1x3x224x224 image"):
        load_model(f"{user_file}:not_image")
    with pytest.raises(DGHError, match=r"not an nn\.Module"):
        load_model(f"{user_file}:not_a_module")
    with pytest.raises(DGHError, match="has no function 'missing'"):
        load_model(f"{user_file}:missing")


def test_no_batchnorm_is_refused_for_dgh(user_file: Path) -> None:
    m = load_model(f"{user_file}:no_bn")
    with pytest.raises(DGHError, match="has no BatchNorm layer"):
        require_batchnorm(m, "DGH")
