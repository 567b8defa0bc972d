"""Counter-based randomness: every draw depends only on (seed, what, iteration, image index).

Nothing depends on the chunk an image falls in, the order of the chunks, the device or (in a
distributed run) the rank, and nothing carries state between iterations: a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

Draws = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per image: flip (bool), dy, dx (int64)

INIT_STREAM = 1
AUGMENT_STREAM = 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def keys(seed: int, stream: int, iteration: int, index: np.ndarray) -> np.ndarray:
    """One well-mixed 64-bit key per image index."""
    h = _splitmix64(np.asarray([seed], dtype=np.uint64))
    h = _splitmix64(h ^ np.uint64(stream))
    h = _splitmix64(h ^ np.uint64(iteration))
    return _splitmix64(h ^ np.asarray(index, dtype=np.uint64))


def gaussian_images(seed: int, index: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """N(0, 1) images, image ``i`` from its own generator seeded by (seed, i)."""
    out = torch.empty((len(index), *shape))
    g = torch.Generator()
    for row, key in enumerate(keys(seed, INIT_STREAM, 0, index)):
        g.manual_seed(int(key >> np.uint64(1)))  # manual_seed takes a non-negative int64
        out[row] = torch.randn(shape, generator=g)
    return out


def augment_draws(
    seed: int, iteration: int, index: np.ndarray, extra: tuple[int, int]
) -> Draws:
    """Per image: horizontal flip (bool) and crop offsets dy in [0, extra_h], dx in [0, extra_w]."""
    k = keys(seed, AUGMENT_STREAM, iteration, index)
    flip = (k & np.uint64(1)).astype(bool)
    dy = ((k >> np.uint64(8)) % np.uint64(extra[0] + 1)).astype(np.int64)
    dx = ((k >> np.uint64(36)) % np.uint64(extra[1] + 1)).astype(np.int64)
    return torch.from_numpy(flip), torch.from_numpy(dy), torch.from_numpy(dx)
