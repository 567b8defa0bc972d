"""How many images fit in one forward/backward chunk, and how much memory a run used."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

import torch
from torch import nn

# Activations saved for backward are not the whole story: gradients exist while backward runs
# and the statistics add temporaries. On ResNet-20 at 32x32 the peak RSS rise of one chunk
# measured 0.98x its saved bytes; 1.25 leaves room for allocator slack.
_TRANSIENT_FACTOR = 1.25
# Fits a whole 256-image ResNet-20 set (about 2 MB saved per image) in one chunk, and keeps
# 4096 images under 2 GB of RSS including torch's own ~700 MB.
DEFAULT_CPU_MB = 768


def saved_bytes_per_image(module: nn.Module, make_input: torch.Tensor, forward: Callable[[torch.Tensor], None]) -> int:
    """Bytes autograd keeps for backward, per image, measured on a 2-image forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = make_input.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(x)
    return max(1, sum(seen.values()) // len(x))


def budget_bytes(device: torch.device, memory_mb: int | None) -> int:
    if memory_mb is not None:
        return memory_mb * 2**20
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    return DEFAULT_CPU_MB * 2**20


def chunk_size(per_image: int, budget: int, n_images: int) -> int:
    """The largest chunk the budget allows, then evened out so the last chunk is not a sliver."""
    largest = max(1, min(n_images, int(budget / (per_image * _TRANSIENT_FACTOR))))
    n_chunks = -(-n_images // largest)
    return -(-n_images // n_chunks)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory.

    On Linux this reads VmHWM, the high-water mark of the process's own address space:
    ``ru_maxrss`` survives exec, so a process started by a big parent (pytest after loading
    TensorFlow, say) would report the parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
