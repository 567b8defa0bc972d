"""A generation step captured once as a CUDA graph and replayed every iteration.

A DGH step on a small model is several hundred small kernels (convolutions, the BN-input sums
of every layer, the loss, their backward); on a GPU, launching them from Python costs more than
running them. The step's shapes and the images' storage never change, so the whole forward and
backward can be recorded once and replayed. What changes per iteration (the flips and crop
offsets) lives in fixed device buffers that are overwritten before each replay; the images'
gradient is the graph's own output buffer, overwritten in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dgh_deploy.generation.draws import Draws

LossTerms = tuple[torch.Tensor, torch.Tensor]


class GraphedStep:
    """``step(images, draws) -> loss terms`` (filling ``images.grad``), as one CUDA graph.

    ``images`` must keep its storage for the graph's life (the optimiser updates it in place)
    and its ``.grad`` must not be reset between replays.
    """

    def __init__(self, step: Callable[[torch.Tensor, Draws], LossTerms], images: torch.Tensor, drawn: Draws,
                 warmup: int = 2) -> None:
        device = images.device
        self.buffers = tuple(t.to(device).clone() for t in drawn)
        # Warm-up on a side stream, as torch.cuda.graph asks: library handles, workspaces and
        # kernel choices are made before capture, not recorded into it.
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                images.grad = None
                step(images, self.buffers)  # type: ignore[arg-type]
        torch.cuda.current_stream(device).wait_stream(side)
        images.grad = None  # the captured backward allocates it in the graph's pool
        # The graph gets a memory pool of its own: hand back what the warm-up left cached, or a
        # set sized to most of the GPU's memory would need that memory twice.
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.terms = step(images, self.buffers)  # type: ignore[arg-type]

    def __call__(self, drawn: Draws) -> LossTerms:
        for buffer, value in zip(self.buffers, drawn, strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.terms
