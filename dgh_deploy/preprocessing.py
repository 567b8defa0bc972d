"""How pixels become model input. Each loaded model carries one, so users never repeat it."""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.ultralytics_quiet import quiet_ultralytics

EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera sets instead of turning the pixels
# Pillow's own opener, kept before anything imports Ultralytics: Ultralytics replaces Image.open
# process-wide with one that, for a file Pillow cannot identify, tries to pip-install a HEIF plugin.
_pillow_open = Image.open

RESIZES = ("center_crop", "letterbox", "stretch")
CHANNEL_ORDERS = ("RGB", "BGR")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """RGB pixels in 0..255 -> ``(pixels / 255 - mean) / std``, after resizing to the input size.

    ``resize``: ``"center_crop"`` (classifiers: shorter side to the input size, then a center
    crop), ``"letterbox"`` (YOLO: keep the aspect ratio, pad with ``pad_value``) or ``"stretch"``
    (both sides to the input size, the aspect ratio not kept, as OpenCV's ``cv2.resize``).
    ``channel_order``: ``"RGB"``, or ``"BGR"`` for models trained on OpenCV's ``imread`` pixels;
    ``mean`` and ``std`` are in the model's channel order.
    """

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "center_crop"
    pad_value: int = 114
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise DGHError(f"resize '{self.resize}' is not one of {', '.join(RESIZES)}", "pick one of those")
        if self.channel_order not in CHANNEL_ORDERS:
            raise DGHError(f"channel order '{self.channel_order}' is not RGB or BGR", "use 'RGB' or 'BGR'")

    def __repr__(self) -> str:
        # The repr keys cached calibration sets (LoadedModel.fingerprint): RGB, the order every model
        # had before BGR existed, is left out so those keys stay what they were.
        order = "" if self.channel_order == "RGB" else f", channel_order={self.channel_order!r}"
        return (f"Preprocessing(mean={self.mean!r}, std={self.std!r}, resize={self.resize!r}, "
                f"pad_value={self.pad_value!r}{order})")

    def pixel_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of the model input for pixel values 0 and 255: DGH clips to it."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return ((0.0 - mean) / std).astype(np.float32), ((1.0 - mean) / std).astype(np.float32)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """N x H x W x 3 (or H x W x 3) uint8/float RGB pixels -> N x 3 x H x W float32 model input."""
        x = np.asarray(pixels, dtype=np.float32) / 255.0
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.moveaxis(x, -1, -3).astype(np.float32)

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalise`, clipped to uint8: for pictures of generated images."""
        x = np.moveaxis(np.asarray(x, np.float32), -3, -1)
        x = (x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)) * 255.0
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def resize_image(self, image: Image.Image, size: tuple[int, int]) -> np.ndarray:
        """A PIL image -> H x W x 3 uint8 at ``size`` (height, width)."""
        image = image.convert("RGB")
        h, w = size
        if image.size == (w, h):
            return np.asarray(image)
        if self.resize == "letterbox":
            return letterbox(np.asarray(image), size, self.pad_value)[0]
        if self.resize == "stretch":
            return stretch(np.asarray(image), size)[0]
        scale = max(h / image.height, w / image.width)
        new = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
        image = image.resize(new, Image.BILINEAR)
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        return np.asarray(image.crop((left, top, left + w, top + h)))

    def load(self, path: str | Path, size: tuple[int, int]) -> np.ndarray:
        """An image file -> 3 x H x W float32 model input, upright as Ultralytics reads it."""
        return self.normalise(self.resize_image(open_image(path), size))


def open_image(path: str | Path) -> Image.Image:
    """An image file -> an RGB image, turned by its EXIF orientation exactly when Ultralytics turns it.

    The one reader of image files (classification, detection, real-image calibration). Ultralytics'
    loaders decode with OpenCV, which applies the EXIF orientation for some formats and not others
    (OpenCV 4.11: JPEG, PNG and TIFF yes, WebP no); reading a phone photo any other way would score
    other pixels against the same labels than ``yolo val`` does. Pixels are decoded by Pillow, as
    before (bit-identical to OpenCV on JPEG and PNG); only the turn follows Ultralytics.
    """
    try:
        with quiet_ultralytics(), _pillow_open(path) as im:
            if _orientation(im) not in (0, 1) and ultralytics_turns(im.format, Path(path).suffix):
                return ImageOps.exif_transpose(im).convert("RGB")
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, ImportError, Image.DecompressionBombError) as exc:
        raise DGHError(f"cannot read image '{path}' ({exc_reason(exc)})", "remove or replace the file") from exc


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block: as stored (Ultralytics' exif_size also ignores it)
        return 1


@functools.cache
def ultralytics_turns(image_format: str | None, suffix: str) -> bool:
    """Whether Ultralytics' image reader applies the EXIF orientation to a file of this format and suffix.

    Asked of the installed Ultralytics and OpenCV once, on a 2 x 1 image tagged "rotate 90": which
    formats OpenCV turns changes between its versions, and the answer must be the validator's own.
    """
    from ultralytics.utils.patches import imread

    probe = Image.new("RGB", (2, 1))
    exif = probe.getexif()
    exif[EXIF_ORIENTATION] = 6
    with tempfile.TemporaryDirectory() as tmp, quiet_ultralytics():
        f = Path(tmp) / f"probe{suffix}"
        try:
            probe.save(f, format=image_format, exif=exif)
        except (OSError, ValueError, KeyError):
            return True  # cannot probe: turned, as by OpenCV's JPEG reader and Ultralytics' Pillow fallback (HEIC)
        decoded = imread(str(f))
    return decoded is not None and decoded.shape[:2] == (2, 1)


@dataclass(frozen=True)
class Placement:
    """Where a letterboxed image lies on its canvas: the original and the resized (height, width),
    the (left, top) padding, and ``extent``, the (height, width) labels are scaled to.

    The two sides are rounded apart, so each axis has its own gain. ``extent`` is ``resized``
    unless a rectangular input shrank the image twice: Ultralytics then scales labels by the first
    resize's sides times the second's ratio, not by the rounded result.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    pad: tuple[int, int]
    extent: tuple[float, float]

    @property
    def gain(self) -> tuple[float, float]:
        """(x, y) scale from original to input pixels."""
        return self.extent[1] / self.original[1], self.extent[0] / self.original[0]

    def labels_to_input(self, cxcywh: np.ndarray) -> np.ndarray:
        """Normalised ``cx cy w h`` rows (YOLO labels) -> ``x1 y1 x2 y2`` input pixels, as Ultralytics'
        LetterBox moves labels: scaled by the resized size, shifted by the padding."""
        (h, w), (left, top) = self.extent, self.pad
        cx, cy, bw, bh = (np.asarray(cxcywh, np.float32)[:, k] for k in range(4))
        return np.stack([(cx - bw / 2) * w + left, (cy - bh / 2) * h + top,
                         (cx + bw / 2) * w + left, (cy + bh / 2) * h + top], 1)

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """``x1 y1 x2 y2`` input pixels -> original image pixels (the inverse of :meth:`labels_to_input`)."""
        (gx, gy), (left, top) = self.gain, self.pad
        return (np.asarray(xyxy, np.float32) - [left, top, left, top]) / np.asarray([gx, gy, gx, gy], np.float32)

    def clip(self, xyxy: np.ndarray) -> np.ndarray:
        """``x1 y1 x2 y2`` input pixels cut at the edges of the image on the canvas (not the padding)."""
        (h, w), (left, top) = self.resized, self.pad
        lo, hi = np.asarray([left, top, left, top], np.float32), np.asarray([left + w, top + h] * 2, np.float32)
        return np.clip(np.asarray(xyxy, np.float32), lo, hi)


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, Placement]:
    """Resize keeping the aspect ratio and centre on a ``pad_value`` canvas, pixel for pixel as
    Ultralytics' validator does (its ``load_image``, then ``LetterBox(scaleup=False)``).

    The long side goes to ``max(size)`` with OpenCV's bilinear resize and the short side rounded
    up; an image that then still exceeds a rectangular ``size`` is shrunk once more (rounded).
    Pillow's bilinear filter (antialiased when shrinking) and sides rounded to nearest moved
    YOLOv5n's mAP50-95 at 320 on coco128 by 0.3 points against ``yolo val``: see docs/design.md.
    Returns the canvas and the image's :class:`Placement` on it, to map labels and boxes.
    """
    import cv2

    h0, w0 = image.shape[:2]
    resized = _long_side_to(image, max(size))
    h1, w1 = resized.shape[:2]
    r = min(size[0] / h1, size[1] / w1, 1.0)  # scaleup=False: only a rectangular size shrinks it again
    new_w, new_h = max(round(w1 * r), 1), max(round(h1 * r), 1)
    if (new_w, new_h) != (w1, h1):
        resized = cv2.resize(resized, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size[0], size[1], 3), pad_value, dtype=np.uint8)
    left, top = round((size[1] - new_w) / 2 - 0.1), round((size[0] - new_h) / 2 - 0.1)
    canvas[top : top + new_h, left : left + new_w] = resized.reshape(new_h, new_w, -1)
    return canvas, Placement((h0, w0), (new_h, new_w), (left, top), (h1 * r, w1 * r))


def stretch(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Placement]:
    """Both sides to ``size`` with OpenCV's bilinear resize (``cv2.resize(..., INTER_LINEAR)``, as
    detectors trained on plain resizes read their images), and the image's :class:`Placement`."""
    import cv2

    h0, w0 = image.shape[:2]
    h, w = size
    out = image if (h0, w0) == (h, w) else cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, -1), Placement((h0, w0), (h, w), (0, 0), (float(h), float(w)))


def _long_side_to(image: np.ndarray, side: int) -> np.ndarray:
    """The long side to ``side`` (up or down), the short one scaled alike and rounded up, as in
    Ultralytics' ``load_image``."""
    import cv2

    h0, w0 = image.shape[:2]
    r = side / max(h0, w0)
    if r == 1:
        return image
    w, h = min(math.ceil(w0 * r), side), min(math.ceil(h0 * r), side)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
