"""How many images fit in one forward/backward chunk, and how much memory a run used."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import resource
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

# Activations saved for backward are not the whole story: gradients exist while backward runs
# and the statistics add temporaries. On ResNet-20 at 32x32 the peak RSS rise of one chunk
# measured 0.98x its saved bytes; 1.25 leaves room for allocator slack.
_TRANSIENT_FACTOR = 1.25
# Fits a whole 256-image ResNet-20 set (about 2 MB saved per image) in one chunk, and keeps
# the peak of 4096 images at 1.5 to 1.8 GB of RSS here, including torch's own ~530 MB.
DEFAULT_CPU_MB = 768
# On CPU the whole set's activations may stay alive through one backward (no second,
# gradient-free forward) when they fit in this much, and in this share of the available memory.
# YOLOv5n at 320 saves 42 MB per image (64 images: 3.3 GB with the transient factor); 4096
# images of the 32x32 demo would need 10 GB and take the two-pass path, whose memory is one chunk's.
DEFAULT_CPU_RETAIN_MB = 5120
_RETAIN_SHARE_OF_AVAILABLE = 0.4


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
    """Memory one chunk's saved activations may take: all the two-pass path holds at once."""
    if memory_mb is not None:
        return memory_mb * 2**20
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    return DEFAULT_CPU_MB * 2**20


def retain_budget_bytes(device: torch.device, memory_mb: int | None) -> int:
    """Memory the whole set's saved activations may take at once (see :func:`budget_bytes`)."""
    if memory_mb is not None or device.type != "cpu":
        return budget_bytes(device, memory_mb)
    cap = DEFAULT_CPU_RETAIN_MB * 2**20
    available_kib = _proc_kib("/proc/meminfo", "MemAvailable")
    return cap if available_kib is None else min(cap, int(available_kib * 1024 * _RETAIN_SHARE_OF_AVAILABLE))


def _proc_kib(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a Linux /proc file; None elsewhere."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fits(per_image: int, budget: int, n_images: int) -> bool:
    return per_image * _TRANSIENT_FACTOR * n_images <= budget


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
    hwm_kib = _proc_kib("/proc/self/status", "VmHWM")
    if hwm_kib is not None:
        return hwm_kib / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_TRIM_THRESHOLD, _GLIBC_MMAP_MAX = 128 * 1024, 65536


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """Keep freed blocks in the heap for the duration, instead of glibc's default of handing
    every block over 32 MB back to the OS and mapping it afresh (zeroed, page by page) at the
    next allocation. A generation step allocates and frees the same large tensors each time:
    on YOLOv5n at 320 the page faults were 15% of the step (3.15 s -> 2.67 s on the 2-core CPU).
    Freed memory goes back to the OS on exit. A no-op without glibc."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
    libc.mallopt(_M_MMAP_MAX, 0)  # large blocks from the heap; other threads' arenas still map
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (musl has a stub mallopt)
    except (OSError, AttributeError):
        return None
    return libc
