"""Data YAMLs read as Ultralytics reads them, offline; real:DATA.yaml calibration; EXIF-aware image reading."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Imported here, not inside the offline tests: importing Ultralytics probes DNS (its ONLINE flag, unless
# YOLO_OFFLINE is set); what these tests guard is the resolver, which must attempt nothing.
import ultralytics.data.utils as ultralytics_data
import ultralytics.utils.checks as ultralytics_checks
from PIL import Image
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.errors import DGHError
from dgh_deploy.generation import make_calibration_set
from dgh_deploy.preprocessing import EXIF_ORIENTATION, Preprocessing, open_image
from dgh_deploy.tasks.detect_data import read_data_yaml, resolve_data_yaml

ROTATE_90 = 6  # EXIF: the camera was turned; the viewer turns the stored pixels 90 degrees clockwise


def _image(path: Path, seed: int, size: tuple[int, int] = (24, 16), orientation: int | None = None) -> np.ndarray:
    """A small picture (width, height) with a bright corner, so a turn shows; returns its pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 200, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:4, :6] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(pixels)
    if orientation is None:
        im.save(path, quality=95)
    else:
        exif = im.getexif()
        exif[EXIF_ORIENTATION] = orientation
        im.save(path, quality=95, exif=exif)
    return pixels


def _dataset(root: Path, split: str, n: int, first_seed: int = 0) -> list[Path]:
    """``root/images/<split>/*.jpg`` with one label file each in ``root/labels/<split>``: class i % 2."""
    files = []
    for i in range(n):
        f = root / "images" / split / f"im{i:02d}.jpg"
        _image(f, first_seed + i)
        lab = root / "labels" / split / f"im{i:02d}.txt"
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text(f"{i % 2} 0.5 0.5 0.25 0.{i + 1}\n")
        files.append(f)
    return files


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: every DNS lookup or connection is recorded and refused (and the test checks the record,
    since Ultralytics swallows the errors of its own download attempts)."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def ultralytics_log() -> Iterator[_Records]:
    """What Ultralytics logs, seen where its own handler would print it."""
    handler = _Records()
    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(logging.INFO)  # whatever YOLO_VERBOSE says: records must reach the handler unless dropped
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _stock_layout(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """Ultralytics' coco layout: datasets/tiny/{images,labels}/{train,val}, val as a ./ list, names as a
    mapping, ``path:`` relative (not to the YAML's folder, which is elsewhere)."""
    datasets = tmp_path / "datasets"
    root = datasets / "tiny"
    _dataset(root, "train", 3)
    val = _dataset(root, "val", 4, first_seed=10)
    (root / "images" / "val" / "unlisted.jpg").write_bytes(val[0].read_bytes())  # in the folder, not in the list
    (root / "val.txt").write_text("".join(f"./images/val/{f.name}\n" for f in reversed(val)))
    yaml = tmp_path / "configs" / "tiny.yaml"
    yaml.parent.mkdir()
    yaml.write_text("path: tiny\ntrain: images/train\nval: val.txt\nnames:\n  0: cat\n  1: dog\n")
    return yaml, datasets, val


def _ultralytics_dataset(split_path: str, data: dict) -> tuple[list[str], list[np.ndarray]]:
    """Images and labels as Ultralytics' own YOLODataset (what yolo val iterates) reads them."""
    from ultralytics.data.dataset import YOLODataset

    ds = YOLODataset(img_path=split_path, imgsz=32, augment=False, data=data, task="detect")
    return ds.im_files, [np.concatenate([lab["cls"], lab["bboxes"]], 1) for lab in ds.labels]


def test_stock_ultralytics_layout_path_from_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               offline: list[str]) -> None:
    yaml, datasets, val = _stock_layout(tmp_path)
    monkeypatch.chdir(datasets)  # `path: tiny` is relative to the working folder, as in Ultralytics
    data = read_data_yaml(yaml)
    assert data.images == sorted(f.resolve() for f in val)  # listed ones only, sorted as Ultralytics sorts
    assert data.names == ("cat", "dog")
    assert [lab.tolist() for lab in data.labels] == [[[i % 2, 0.5, 0.5, 0.25, float(np.float32(f"0.{i + 1}"))]]
                                                     for i in range(4)]
    monkeypatch.setattr(ultralytics_data, "check_font", lambda *a: None)  # its font download, for plots
    ul_data = ultralytics_data.check_det_dataset(str(yaml), autodownload=False)
    files, labels = _ultralytics_dataset(ul_data["val"], ul_data)
    assert [str(f) for f in data.images] == files
    for ours, theirs in zip(data.labels, labels, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert not offline


def test_relative_path_falls_back_to_ultralytics_datasets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 offline: list[str]) -> None:
    yaml, datasets, val = _stock_layout(tmp_path)
    monkeypatch.setattr(ultralytics_data, "DATASETS_DIR", datasets)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # `tiny` is not here: Ultralytics' datasets folder is next
    assert read_data_yaml(yaml).images == sorted(f.resolve() for f in val)
    assert resolve_data_yaml(yaml).root == (datasets / "tiny").resolve()
    assert not offline


def test_nc_with_list_names_and_split_folders(tmp_path: Path) -> None:
    _dataset(tmp_path, "train", 2)
    val = _dataset(tmp_path, "val", 3, first_seed=5)
    yaml = tmp_path / "data.yaml"  # no `path:`: the YAML's own folder
    yaml.write_text("train: images/train\nval: images/val\nnc: 2\nnames: [cat, dog]\n")
    data = read_data_yaml(yaml)
    assert data.images == [f.resolve() for f in val] and data.names == ("cat", "dog")
    assert [int(lab[0, 0]) for lab in data.labels] == [0, 1, 0]
    yaml.write_text("train: images/train\nval: [images/val, images/train]\nnc: 2\n")  # nc only, a list of folders
    data = read_data_yaml(yaml)
    assert data.names == ("class_0", "class_1") and len(data.images) == 5


def test_val_only_yaml_still_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics requires `train`; a YAML written only to validate on keeps working for val."""
    val = _dataset(tmp_path / "d", "val", 2)
    yaml = tmp_path / "configs" / "val_only.yaml"
    yaml.parent.mkdir()
    yaml.write_text("path: d\nval: images/val\nnames: [cat, dog]\n")
    monkeypatch.chdir(tmp_path)  # `path: d` stays relative to the working folder, not to the YAML
    assert read_data_yaml(yaml).images == [f.resolve() for f in val]
    yaml.write_text("val: ../d/images/val\nnames: [cat, dog]\n")  # no `path:`: the YAML's own folder
    assert read_data_yaml(yaml).images == [f.resolve() for f in val]


@pytest.mark.parametrize(
    "text,match",
    [
        ("train: a\nval: [b\n", "cannot parse data YAML"),
        ("- a\n- b\n", "is not a mapping"),
        ("train: images/train\nnames: [cat]\n", "has no 'val' entry"),
        ("train: images/train\nval: images/val\n", "either 'names' or 'nc' are required"),
        ("train: images/train\nval: images/val\nnc: 3\nnames: [cat, dog]\n", "'names' length 2 and 'nc: 3' must match"),
        ("train: images/train\nval: images/val\nnames: {0: cat, 5: dog}\n", "invalid class indices"),
        ("train: images/train\nval: images/val\nnames: cat\n", "'names' must be list or dict"),
        ("train: images/train\nval: images/nothing\nnames: [cat, dog]\n", r"images folder '.*nothing' for the 'val'"),
        ("train: images/train\nval: empty.txt\nnames: [cat, dog]\n", "no images in the 'val' split"),
        ("train: images/train\nval: gone.txt\nnames: [cat, dog]\n", "lists 1 image.* that do not exist"),
    ],
)
def test_bad_yaml_is_one_line(text: str, match: str, tmp_path: Path) -> None:
    _dataset(tmp_path, "train", 1)
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "empty.txt").write_text("notes.md\n")
    (tmp_path / "gone.txt").write_text("./images/val/gone.jpg\n")
    yaml = tmp_path / "data.yaml"
    yaml.write_text(text)
    with pytest.raises(DGHError, match=match) as err:
        read_data_yaml(yaml)
    assert "\n" not in str(err.value) and err.value.fix and "❌" not in str(err.value)


@pytest.mark.parametrize(
    "label,match",
    [
        ("0 0.5 0.5 1.2 0.2\n", "coordinates above 1"),
        ("0 -0.5 0.5 0.2 0.2\n", "negative values"),
        ("0.5 0.5 0.5 0.2 0.2\n", "fractional class"),
        ("0 0.1 0.1 0.3 0.1 0.3 0.3\n0 0.5 0.5 0.2 0.2\n", "mixes polygon rows"),
    ],
)
def test_labels_yolo_val_would_skip_are_refused(label: str, match: str, tmp_path: Path) -> None:
    _dataset(tmp_path, "val", 1)
    (tmp_path / "labels" / "val" / "im00.txt").write_text(label)
    yaml = tmp_path / "data.yaml"
    yaml.write_text("val: images/val\nnames: [cat, dog]\n")
    with pytest.raises(DGHError, match=match) as err:
        read_data_yaml(yaml)
    assert "\n" not in str(err.value)


def test_polygons_become_boxes_and_duplicates_go(tmp_path: Path) -> None:
    _dataset(tmp_path, "val", 1)
    (tmp_path / "labels" / "val" / "im00.txt").write_text("1 0.1 0.2 0.5 0.2 0.3 0.6\n" * 2)
    yaml = tmp_path / "data.yaml"
    yaml.write_text("val: images/val\nnames: [cat, dog]\n")
    np.testing.assert_allclose(read_data_yaml(yaml).labels[0], [[1, 0.3, 0.4, 0.4, 0.4]], atol=1e-6)


def test_absent_dataset_fails_in_one_line_without_network_or_chatter(
        tmp_path: Path, offline: list[str], ultralytics_log: _Records, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # No cached font either: Ultralytics' resolver would fetch one over the network after a success.
    monkeypatch.setattr(ultralytics_checks, "USER_CONFIG_DIR", tmp_path)
    yaml = tmp_path / "remote.yaml"
    yaml.write_text("path: dgh_no_such_dataset\ntrain: images/train\nval: images/val\nnames: [a]\n"
                    "download: https://example.invalid/dgh_no_such_dataset.zip\n")
    with pytest.raises(DGHError, match=r"images folder '.*dgh_no_such_dataset.*' for the 'val' split") as err:
        read_data_yaml(yaml)
    assert "\n" not in str(err.value) and "nothing is downloaded" in err.value.fix
    assert not (tmp_path / "dgh_no_such_dataset.zip").exists()
    _dataset(tmp_path / "here", "val", 1)  # and a dataset that is there: resolved without the font download
    yaml.write_text(f"path: {tmp_path / 'here'}\ntrain: images/val\nval: images/val\nnames: [a, b]\n")
    assert len(read_data_yaml(yaml).images) == 1
    assert offline == [] and ultralytics_log.lines == []
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""


def test_ultralytics_log_shows_with_debug_logging(tmp_path: Path, ultralytics_log: _Records) -> None:
    yaml = tmp_path / "data.yaml"
    yaml.write_text("train: images/train\nvalidation: images/val\nnames: [a, b]\n")  # Ultralytics warns: renamed
    _dataset(tmp_path, "train", 1)
    _dataset(tmp_path, "val", 1)
    assert len(read_data_yaml(yaml).images) == 1 and ultralytics_log.lines == []
    ours = logging.getLogger("dgh_deploy")
    level = ours.level
    ours.setLevel(logging.DEBUG)  # --verbose
    try:
        read_data_yaml(yaml)
    finally:
        ours.setLevel(level)
    assert any("validation" in line for line in ultralytics_log.lines)


def test_real_data_yaml_picks_seeded_images_from_train(tmp_path: Path) -> None:
    train = _dataset(tmp_path, "train", 8)
    _dataset(tmp_path, "val", 2, first_seed=50)
    yaml = tmp_path / "data.yaml"
    yaml.write_text("train: images/train\nval: images/val\nnames: [cat, dog]\n")
    model = as_loaded(tiny_bn_net())
    cs = make_calibration_set(model, f"real:{yaml}", 3, 0, seed=1)
    files = cs.settings["files"]
    assert cs.images.shape == (3, 3, 16, 16) and len(set(files)) == 3
    assert all(f.startswith("images/train/") for f in files)
    assert cs.settings["data"] == str(yaml) and cs.settings["split"] == "train" and cs.settings["seed"] == 1
    np.testing.assert_array_equal(cs.images[0], model.preprocessing.load(tmp_path / files[0], model.imgsz))
    assert make_calibration_set(model, f"real:{yaml}", 3, 0, seed=1).settings["files"] == files
    picks = {tuple(make_calibration_set(model, f"real:{yaml}", 3, 0, seed=s).settings["files"]) for s in range(6)}
    assert len(picks) > 1 and all(tmp_path / f in train for p in picks for f in p)
    with pytest.raises(DGHError, match=r"train split of .* holds 8 images, fewer than the 9") as err:
        make_calibration_set(model, f"real:{yaml}", 9, 0)
    assert "--n-images 8" in err.value.fix


def test_exif_orientation_is_applied_as_ultralytics_applies_it(tmp_path: Path) -> None:
    from ultralytics.utils.patches import imread

    raw = _image(tmp_path / "phone.jpg", 0, size=(24, 16), orientation=ROTATE_90)
    upright = np.asarray(open_image(tmp_path / "phone.jpg"))
    assert upright.shape == (24, 16, 3)  # stored landscape, shown (and scored by yolo val) portrait
    np.testing.assert_array_equal(upright, imread(str(tmp_path / "phone.jpg"))[..., ::-1])
    assert upright[:6, -4:].mean() > 200 and raw[:4, :6].mean() > 200  # the bright corner turned to the top right
    png = tmp_path / "phone.png"
    im = Image.fromarray(raw)
    exif = im.getexif()
    exif[EXIF_ORIENTATION] = ROTATE_90
    im.save(png, exif=exif)
    np.testing.assert_array_equal(np.asarray(open_image(png)), np.rot90(raw, -1))  # lossless: exactly a turn
    # One reader for every task: a letterboxed detector input pads the sides of the portrait photo.
    x = Preprocessing(resize="letterbox").load(png, (32, 32))
    assert np.allclose(x[:, :, :4], 114 / 255) and not np.allclose(x[:, :4, :], 114 / 255)
    for suffix in (".webp", ".bmp"):  # the formats Ultralytics' reader leaves as stored stay as stored
        f = tmp_path / f"phone{suffix}"
        im.save(f, exif=exif, lossless=True) if suffix == ".webp" else im.save(f)
        np.testing.assert_array_equal(np.asarray(open_image(f)), imread(str(f))[..., ::-1])


def test_unreadable_image_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DGHError, match=r"cannot read image '.*broken.jpg'") as err:
        open_image(tmp_path / "broken.jpg")
    assert "\n" not in str(err.value)


def test_coco128_reads_the_same_images_and_labels(assets: Path) -> None:
    root = assets / "coco128"
    data = read_data_yaml(root / "coco128.yaml")
    expected = sorted((root / "images" / "val2017").glob("*.jpg"))
    assert [f.name for f in data.images] == [f.name for f in expected] and len(expected) == 128
    assert all(f.resolve() == g.resolve() for f, g in zip(data.images, expected, strict=True))
    assert len(data.names) == 80 and data.names[0] == "person"
    for f, lab in zip(expected, data.labels, strict=True):
        label_file = root / "labels" / "val2017" / f"{f.stem}.txt"
        want = np.loadtxt(label_file, ndmin=2, dtype=np.float32) if label_file.is_file() else np.zeros((0, 5))
        np.testing.assert_array_equal(lab, want.reshape(-1, 5))
    assert sum(len(lab) for lab in data.labels) == 898
    model = as_loaded(tiny_bn_net())
    cs = make_calibration_set(model, f"real:{root / 'coco128.yaml'}", 4, 0, seed=0)
    assert all(f.startswith("images/train2017/") for f in cs.settings["files"])
