"""The generation losses against their definitions: values and gradients."""

from __future__ import annotations

import torch

from dgh_deploy.generation.losses.output_stretch import output_stretch_sum


def stretch_by_definition(tensors: list[torch.Tensor]) -> torch.Tensor:
    """-(max - min) per image, summed: amax/amin, whose gradient the loss's own backward replaces."""
    return -sum(((t.float().flatten(1).amax(1) - t.float().flatten(1).amin(1)).sum() for t in tensors),
                torch.zeros(()))


def test_output_stretch_matches_its_definition_value_and_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)

    def maps(x: torch.Tensor) -> list[torch.Tensor]:  # strided slices, a scaled map, a channels-last one
        return [x[:, :3], 2 * x[:, 3:], x.contiguous(memory_format=torch.channels_last)[:, 1:5]]

    ours = output_stretch_sum(maps(x))
    (g_ours,) = torch.autograd.grad(ours, x)
    reference = stretch_by_definition(maps(x))
    (g_ref,) = torch.autograd.grad(reference, x)
    assert torch.equal(ours, reference) and torch.equal(g_ours, g_ref)
    (g_one,) = torch.autograd.grad(output_stretch_sum([x]), x)
    assert [int((g != 0).sum()) for g in g_one] == [2] * 4  # per image: its maximum and its minimum


def test_a_constant_map_has_no_stretch_gradient() -> None:
    x = torch.zeros(2, 3, 4, requires_grad=True)
    loss = output_stretch_sum([x * 1.0])
    loss.backward()
    assert float(loss) == 0 and x.grad is not None and not x.grad.any()


def test_bf16_maps_give_a_float32_loss() -> None:
    x = torch.randn(2, 3, 5, 5).bfloat16().requires_grad_(True)
    loss = output_stretch_sum([x])
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad is not None and x.grad.dtype == torch.bfloat16
