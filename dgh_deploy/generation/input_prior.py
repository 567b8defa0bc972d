"""What the model input, counted as one more BN "layer", is matched to, and where images start.

MCT matches the input to mean 0 and std 1 and starts from N(0, 1) images. That is right for a
model that normalises its input by its training data's pixel statistics: normalised training
images have mean 0 and std 1 by construction. A model fed raw 0..1 pixels (every YOLO) has no
such normalisation, and mean 0 / std 1 in 0..1 space asks for images that are half black and
clipped: the input target must then be what natural images look like in 0..1 space.
"""

from __future__ import annotations

import numpy as np

from dgh_deploy.errors import DGHError
from dgh_deploy.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

PRIORS = ("auto", "model", "natural")


def normalises(preprocessing: Preprocessing) -> bool:
    """True when the preprocessing subtracts a mean or divides by a std (its data's statistics)."""
    return tuple(preprocessing.mean) != (0.0, 0.0, 0.0) or tuple(preprocessing.std) != (1.0, 1.0, 1.0)


def input_statistics(preprocessing: Preprocessing, prior: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of the model input that generation aims at and starts from.

    ``model``: 0 and 1 (MCT). ``natural``: ImageNet's pixel statistics, put through the model's
    preprocessing. ``auto``: ``model`` when the preprocessing normalises, else ``natural``.
    """
    if prior not in PRIORS:
        raise DGHError(f"unknown input prior '{prior}'", f"use one of {', '.join(PRIORS)}")
    if prior == "model" or (prior == "auto" and normalises(preprocessing)):
        return np.zeros(3), np.ones(3)
    mean, std = np.asarray(preprocessing.mean, np.float64), np.asarray(preprocessing.std, np.float64)
    return (np.asarray(IMAGENET_MEAN) - mean) / std, np.asarray(IMAGENET_STD) / std
