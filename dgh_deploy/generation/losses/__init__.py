"""DGH's losses, one per file."""

from dgh_deploy.generation.losses.bn_alignment import BNAlignmentLoss
from dgh_deploy.generation.losses.output_stretch import output_stretch_sum

__all__ = ["BNAlignmentLoss", "output_stretch_sum"]
