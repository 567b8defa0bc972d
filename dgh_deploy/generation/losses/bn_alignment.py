"""BatchNorm alignment: the generated images' BN-input statistics against the running ones."""

from __future__ import annotations

import torch

from dgh_deploy.generation.stats import StatSums


class BNAlignmentLoss:
    """MCT's ``l2_square`` with AVERAGE layer weighting.

    Per layer ``||mean - mean_bn||^2 / C + ||std - std_bn||^2 / C``, averaged over the layers
    (the model input counts as one, with target mean 0 and std 1). ``std = sqrt(var + eps)``.
    """

    def __init__(self, reference: list[tuple[torch.Tensor, torch.Tensor]], eps: float = 1e-6) -> None:
        self.reference = reference
        self.eps = eps

    def __call__(self, sums: StatSums) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=self.reference[0][0].device)
        for (mean, std), (ref_mean, ref_std) in zip(sums.mean_std(self.eps), self.reference, strict=True):
            c = ref_mean.numel()
            total = total + ((mean - ref_mean) ** 2).sum() / c + ((std - ref_std) ** 2).sum() / c
        return total / len(self.reference)
