"""How pixels become model input. Each loaded model carries one, so users never repeat it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """RGB pixels in 0..255 -> ``(pixels / 255 - mean) / std``, after resizing to the input size.

    ``resize``: ``"center_crop"`` (classifiers: shorter side to the input size, then a center
    crop) or ``"letterbox"`` (YOLO: keep the aspect ratio, pad with ``pad_value``).
    """

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "center_crop"
    pad_value: int = 114

    def pixel_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of the model input for pixel values 0 and 255: DGH clips to it."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return ((0.0 - mean) / std).astype(np.float32), ((1.0 - mean) / std).astype(np.float32)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """N x H x W x 3 (or H x W x 3) uint8/float pixels -> N x 3 x H x W float32 model input."""
        x = np.asarray(pixels, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.moveaxis(x, -1, -3).astype(np.float32)

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalise`, clipped to uint8: for pictures of generated images."""
        x = np.moveaxis(np.asarray(x, np.float32), -3, -1)
        x = (x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)) * 255.0
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def resize_image(self, image: Image.Image, size: tuple[int, int]) -> np.ndarray:
        """A PIL image -> H x W x 3 uint8 at ``size`` (height, width)."""
        image = image.convert("RGB")
        h, w = size
        if image.size == (w, h):
            return np.asarray(image)
        if self.resize == "letterbox":
            return letterbox(np.asarray(image), size, self.pad_value)[0]
        scale = max(h / image.height, w / image.width)
        new = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
        image = image.resize(new, Image.BILINEAR)
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        return np.asarray(image.crop((left, top, left + w, top + h)))

    def load(self, path: str, size: tuple[int, int]) -> np.ndarray:
        """An image file -> 3 x H x W float32 model input."""
        with Image.open(path) as im:
            return self.normalise(self.resize_image(im, size))


def letterbox(
    image: np.ndarray, size: tuple[int, int], pad_value: int = 114
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio, centre on a ``pad_value`` canvas (YOLO's letterbox).

    Returns the canvas, the scale and the (left, top) padding, to map boxes back.
    """
    h, w = image.shape[:2]
    r = min(size[0] / h, size[1] / w)
    new_w, new_h = round(w * r), round(h * r)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)) if r != 1 else image
    canvas = np.full((size[0], size[1], 3), pad_value, dtype=np.uint8)
    left, top = (size[1] - new_w) / 2, (size[0] - new_h) / 2
    li, ti = round(left - 0.1), round(top - 0.1)
    canvas[ti : ti + new_h, li : li + new_w] = resized
    return canvas, r, (li, ti)
