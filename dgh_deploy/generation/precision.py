"""The number format a generation step computes in: float32, or bfloat16 autocast where the
hardware has native bfloat16 arithmetic.

``fp32``: no autocast. ``bf16``: the model's convolutions and matrix products run under
``torch.autocast(device, torch.bfloat16)``; the images, their gradient, the optimiser state, the
image pipeline, the BN-input statistics (float64 sums) and the losses stay float32/float64.
``auto`` (the default): bf16 where the device computes it natively, else fp32; fp32 on a CPU for a
model with depthwise convolutions, which run slower in bf16 there (:func:`bf16_is_slower`). Over three seeds
bf16 sets calibrate as well as fp32 ones (cifar_resnet20 under the ``sim`` target,
``bench/results/precision_r20_cpu.json``; YOLOv5n at 640 on tflite-int8, mean mAP50-95 32.16
against 32.18, ``bench/results/tflite_ranges_yolov5n_640_maps_bf16_litert_cpu.json``), so the
faster one runs wherever it is native (1.2x to 1.3x a step on a 2-core Xeon with AMX). A set
records what ran (fp32 or bf16): the same command on a CPU with and one without bf16 makes two
sets, cached apart.

bf16 is never emulated: oneDNN would run it on any AVX-512 CPU by converting in software, slower
than fp32. On a CPU it needs AVX512-BF16 or AMX-BF16 (x86: Zen 4, Sapphire Rapids and later) or
the BF16 extension (Arm); on a GPU compute capability 8.0 (Ampere) or later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from dgh_deploy.errors import DGHError

PRECISIONS = ("fp32", "bf16", "auto")
DEFAULT_PRECISION = "auto"  # see DGHConfig.precision and the module docstring
# CPU capability names (torch.cpu.get_capabilities() and /proc/cpuinfo flags) of native bf16
# arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 (FEAT_BF16) and SVE-BF16.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16", "svebf16")


def resolve_precision(precision: str, device: str | torch.device, module: nn.Module | None = None) -> str:
    """``fp32`` or ``bf16``: what ``precision`` means on ``device`` for ``module`` (``auto`` decided here).

    An explicit ``bf16`` where the device has no native bf16 is refused (one line naming the fix)."""
    if precision not in PRECISIONS:
        raise DGHError(f"unknown precision '{precision}'", f"use one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    native = native_bf16(torch.device(device))
    if precision == "auto":
        return "bf16" if native and not bf16_is_slower(module, torch.device(device)) else "fp32"
    if not native:
        raise DGHError(f"--precision bf16 asked for, but {_why_not_bf16(torch.device(device))}",
                       "use --precision fp32, or auto (bf16 only where the hardware has it)")
    return "bf16"


def bf16_is_slower(module: nn.Module | None, device: torch.device) -> bool:
    """Whether ``module`` generates no faster in bf16 on a CPU with it: one with grouped (depthwise)
    convolutions. oneDNN's bf16 depthwise convolutions are memory-bound and AMX multiplies dense tiles
    only: on a 2-core Xeon with AMX a depthwise 3x3 or 5x5 forward + backward took 1.25x to 1.5x its
    fp32 time and EfficientNet-Lite0's step 1.17x at 112 px, 1.04x at 224 (its whole jobs, one each,
    within the machine's spread of each other), where YOLOv5n's took 0.75x to 0.84x. Without a gain
    the reference arithmetic stays."""
    return device.type == "cpu" and module is not None and any(
        isinstance(m, nn.Conv2d) and m.groups > 1 for m in module.modules())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


# oneDNN's ISA levels below AVX512_CORE_BF16: capped there (ONEDNN_MAX_CPU_ISA), its bf16
# convolutions run emulated whatever the CPU has.
_ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 (x86), BF16 (Arm): from torch's CPU capabilities, or where this
    torch has no such query, from the CPU flags Linux lists in /proc/cpuinfo; not where the process
    caps oneDNN below bf16 (``ONEDNN_MAX_CPU_ISA=AVX2``, as on an AVX2 machine)."""
    if _onednn_isa_cap() in _ONEDNN_CAPS_WITHOUT_BF16:
        return False
    caps = _torch_cpu_capabilities()
    if caps is not None:
        return any(bool(caps.get(flag)) for flag in _CPU_BF16_FLAGS)
    return bool(_proc_cpu_flags() & set(_CPU_BF16_FLAGS))


def _onednn_isa_cap() -> str:
    """The ISA level this process caps oneDNN at (upper case; empty: none)."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()


def _torch_cpu_capabilities() -> Mapping[str, Any] | None:
    query = getattr(torch.cpu, "get_capabilities", None)  # torch 2.9 and later
    if query is None:
        return None
    try:
        return query()
    except RuntimeError:
        return None


def _proc_cpu_flags() -> set[str]:
    """The ``flags`` (x86) or ``Features`` (Arm) of the first CPU in /proc/cpuinfo; empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _why_not_bf16(device: torch.device) -> str:
    if device.type == "cuda" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU"
    if device.type == "cuda":
        return (f"GPU '{torch.cuda.get_device_name(device)}' has no native bfloat16 arithmetic (compute capability "
                "8.0 and later have it)")
    if device.type == "cpu" and (cap := _onednn_isa_cap()) in _ONEDNN_CAPS_WITHOUT_BF16:
        return f"this process caps oneDNN at {cap} (ONEDNN_MAX_CPU_ISA), below its bf16 kernels"
    if device.type == "cpu":
        return ("this CPU has no native bfloat16 arithmetic (AVX512-BF16, AMX-BF16 or Arm BF16): torch would "
                "emulate it, slower than fp32")
    return f"device '{device}' has no bfloat16 autocast here"


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of a resolved ``precision`` (disabled for fp32). The weight cache is
    off: a CUDA graph must not capture casts it would reuse, and the weights are frozen anyway."""
    kind = device.type if device.type in ("cpu", "cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)
