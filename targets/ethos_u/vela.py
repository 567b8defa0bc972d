"""Arm's Vela compiler: a full-integer .tflite in, the Ethos-U-compiled .tflite and what it costs out.

Vela runs in a subprocess (``python -m ethosu.vela``): its C++ core prints from native code and
can abort on a bad input, and neither should reach the job's own process. What the report needs
comes from Vela's own outputs:

- the summary CSV it always writes (``<name>_summary_<system config>.csv``): memory used per area,
  cycles, the estimated inference time, MACs, the configuration it compiled for;
- its stdout: the operator counts (``CPU operators = N``, ``NPU operators = M``) and, for each op
  it cannot place on the NPU, a ``Warning (supported operators)`` block naming the op, its output
  tensor and the reason (its supported-operator constraint). No structured output carries the
  reasons (the debug database has placement, not why), so those blocks are parsed.

Vela's configurations are named in .ini files: Arm's ``config_files/Arm/vela.ini`` and ours,
``vela.ini`` beside this file (an Ethos-U55 with nothing but a small SRAM). Both are passed on
every run with an explicit system configuration and memory mode, so Vela never falls back to
its internal defaults (which it warns about).
"""

from __future__ import annotations

import configparser
import csv
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from dgh_deploy.errors import DGHError
from dgh_deploy.versions import installed_version

# Vela 5.2.0's accelerator configurations (``vela --help``): the CLI help lists them without
# importing Vela; the installed Vela's own list is what a name is checked against.
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
                "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")
DEFAULT_ACCELERATOR = "ethos-u55-128"
# Per NPU family, the system configuration and memory mode Vela itself falls back to.
FAMILY_DEFAULTS = {
    "ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u65": ("Ethos_U65_Client_Server", "Dedicated_Sram_384KB"),
    "ethos-u85": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB"),
}
OUR_CONFIG = Path(__file__).with_name("vela.ini")
ARM_CONFIG = "Arm/vela.ini"  # how Vela names its bundled file (relative to its config_files folder)
INSTALL_HINT = "pip install 'dgh-deploy[tflite]' (it brings ethos-u-vela and tflite-micro)"

_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+)", re.M)
_FALLBACK = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'\n"
                       r"Reason: (.*)\n((?:.+\n)*)", re.M)
_WARNING = re.compile(r"^Warning: (.*)$", re.M)


@dataclass(frozen=True)
class VelaSettings:
    """What Vela compiles for: the NPU, the system around it (clocks, buses) and where tensors live."""

    accelerator: str = DEFAULT_ACCELERATOR
    system_config: str = ""  # "" = Vela's default for the NPU family
    memory_mode: str = ""

    def resolved(self) -> VelaSettings:
        """The same, with the family's defaults filled in."""
        system, memory = FAMILY_DEFAULTS[self.accelerator.rsplit("-", 1)[0]]
        return VelaSettings(self.accelerator, self.system_config or system, self.memory_mode or memory)


@dataclass
class CPUOp:
    """An op Vela leaves to the CPU (TFLite Micro's kernels on the Cortex-M), and why."""

    op: str  # the TFLite builtin, e.g. FLOOR
    name: str  # its output tensor
    reason: str  # Vela's reason, e.g. "Unsupported opType"
    constraint: str = ""  # the supported-operator constraint it breaks, when Vela names one


@dataclass
class VelaReport:
    """One Vela compilation, as report.json shows it (sizes in KiB, as Vela reports them)."""

    accelerator: str
    system_config: str
    memory_mode: str
    npu_ops: int
    cpu_ops: int
    cpu_fallback: list[CPUOp]
    sram_kib: float  # SRAM the NPU needs (in an SRAM-only memory mode, the weights Vela keeps there too)
    flash_kib: float  # weights read from flash
    dram_kib: float
    sram_capacity_kib: float | None  # the memory mode's SRAM size, when it names one
    fits_sram: bool | None
    inference_ms: float
    cycles_total: int
    cycles_npu: int
    macs: int
    core_clock_mhz: float
    memory_kib: dict[str, float] = field(default_factory=dict)  # Vela's "memory used" per area, as it reports it
    warnings: list[str] = field(default_factory=list)
    vela_version: str = ""
    seconds: float = 0.0

    @property
    def npu_share(self) -> float:
        """Percent of Vela's operators that run on the NPU."""
        total = self.npu_ops + self.cpu_ops
        return 100.0 * self.npu_ops / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["npu_op_share"] = round(self.npu_share, 2)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VelaReport:
        """The compilation as :meth:`as_dict` wrote it (``npu_op_share`` is worked out again)."""
        named = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in named}
        return cls(**{**values, "cpu_fallback": [CPUOp(**op) for op in d["cpu_fallback"]]})


@dataclass
class VelaOutput:
    """Vela's files for one model, in a scratch folder."""

    model: Path  # <name>_vela.tflite
    summary: Path  # <name>_summary_<system config>.csv
    log: str  # stdout and stderr
    report: VelaReport


def vela_version() -> str:
    return installed_version("ethos-u-vela", "")


def require_vela() -> None:
    if importlib.util.find_spec("ethosu") is None or importlib.util.find_spec("ethosu.vela") is None:
        raise DGHError("the ethos-u target needs Arm's Vela compiler (ethos-u-vela), which is not installed",
                       INSTALL_HINT)


def installed_accelerators() -> tuple[str, ...]:
    from ethosu.vela.architecture_features import Accelerator

    return tuple(a.value for a in Accelerator)


def arm_config_path() -> Path:
    spec = importlib.util.find_spec("ethosu")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return Path(roots[0]) / "config_files" / ARM_CONFIG if roots else Path(ARM_CONFIG)


@cache
def vela_configs() -> configparser.ConfigParser:
    """Arm's and our .ini files, read the way Vela reads them (ours after Arm's)."""
    parser = configparser.ConfigParser()
    parser.read([arm_config_path(), OUR_CONFIG])
    return parser


def config_names(kind: str) -> list[str]:
    """The names of every ``System_Config`` or ``Memory_Mode`` section Vela will find."""
    prefix = f"{kind}."
    return [s.removeprefix(prefix) for s in vela_configs().sections() if s.startswith(prefix)]


def config_value(section: str, key: str) -> str | None:
    """``key`` of ``section``, following ``inherit=`` as Vela does (the section's own value wins)."""
    parser = vela_configs()
    seen: set[str] = set()
    while parser.has_section(section) and section not in seen:
        if parser.has_option(section, key):
            return parser.get(section, key)
        seen.add(section)
        section = parser.get(section, "inherit", fallback="")
    return None


def check_settings(settings: VelaSettings) -> None:
    """Refuse an NPU, system configuration or memory mode Vela does not know, naming those it does."""
    require_vela()
    known = installed_accelerators()
    if settings.accelerator not in known:
        raise DGHError(f"Vela {vela_version()} has no accelerator configuration '{settings.accelerator}'",
                       f"use --npu with one of: {', '.join(known)}")
    for flag, kind, name in (("--system-config", "System_Config", settings.system_config),
                             ("--memory-mode", "Memory_Mode", settings.memory_mode)):
        names = config_names(kind)
        if name and name not in names:
            raise DGHError(f"Vela's configuration files have no {kind.replace('_', ' ').lower()} '{name}'",
                           f"use {flag} with one of: {', '.join(names)}")


def compile_model(model: Path, settings: VelaSettings, scratch: Path) -> VelaOutput:
    """Run Vela on ``model`` (a full-integer .tflite); its files go to ``scratch``."""
    s = settings.resolved()
    out_dir = Path(tempfile.mkdtemp(prefix="vela-", dir=scratch))
    cmd = [sys.executable, "-m", "ethosu.vela", str(model), "--accelerator-config", s.accelerator,
           "--config", ARM_CONFIG, "--config", str(OUR_CONFIG), "--system-config", s.system_config,
           "--memory-mode", s.memory_mode, "--output-dir", str(out_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    compiled = out_dir / f"{model.stem}_vela.tflite"
    summaries = sorted(out_dir.glob(f"{model.stem}_summary_*.csv"))
    if proc.returncode != 0 or not compiled.is_file() or not summaries:
        raise DGHError(f"Vela could not compile '{model.name}' for {s.accelerator} ({_first_error(log)})",
                       "see the log above with --verbose; a model Vela rejects outright usually has a tensor "
                       "of a type or rank the Ethos-U cannot hold")
    report = parse_report(log, read_summary(summaries[0]), s)
    report.seconds = round(seconds, 3)
    return VelaOutput(compiled, summaries[0], log, report)


def _first_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:200]


def read_summary(path: Path) -> dict[str, str]:
    """Vela's summary CSV: one header row, one row of values."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DGHError(f"Vela's summary '{path.name}' holds no figures", "rerun; if it persists, report it")
    return dict(zip(rows[0], rows[1], strict=False))


def parse_report(log: str, summary: dict[str, str], settings: VelaSettings) -> VelaReport:
    """The report fields from Vela's stdout (placement) and summary CSV (memory, time, MACs)."""
    counts = {kind: int(n) for kind, n in _COUNT.findall(log)}
    fallback = [CPUOp(op, name, reason.strip(), " ".join(extra.split()))
                for op, name, reason, extra in _FALLBACK.findall(log)]
    memory = {area: _number(summary, f"{area}_memory_used")
              for area in ("sram", "dram", "on_chip_flash", "off_chip_flash")}
    sram_only = sram_only_mode(settings.memory_mode)
    sram = memory["sram"] + (memory["on_chip_flash"] if sram_only else 0.0)
    capacity = sram_capacity_kib(settings.memory_mode)
    clock = _number(summary, "core_clock")
    return VelaReport(
        accelerator=settings.accelerator, system_config=summary.get("system_config", settings.system_config),
        memory_mode=summary.get("memory_mode", settings.memory_mode),
        npu_ops=counts.get("NPU", 0), cpu_ops=counts.get("CPU", len(fallback)), cpu_fallback=fallback,
        sram_kib=round(sram, 2),
        flash_kib=round(memory["off_chip_flash"] + (0.0 if sram_only else memory["on_chip_flash"]), 2),
        dram_kib=round(memory["dram"], 2), sram_capacity_kib=capacity,
        fits_sram=None if capacity is None else sram <= capacity,
        inference_ms=round(_number(summary, "inference_time") * 1000.0, 4),
        cycles_total=int(_number(summary, "cycles_total")), cycles_npu=int(_number(summary, "cycles_npu")),
        macs=int(_number(summary, "nn_macs")), core_clock_mhz=clock / 1e6,
        memory_kib={k: round(v, 2) for k, v in memory.items()},
        warnings=[w for w in _WARNING.findall(log) if "supported operators" not in w],
        vela_version=vela_version(),
    )


def _number(summary: dict[str, str], key: str) -> float:
    try:
        return float(summary.get(key, "") or 0.0)
    except ValueError:
        return 0.0


def sram_only_mode(memory_mode: str) -> bool:
    """Whether weights, arena and cache all sit in one memory (Vela then keeps the weights in SRAM,
    reported as SRAM-speed "on-chip flash")."""
    section = f"Memory_Mode.{memory_mode}"
    areas = {config_value(section, key) for key in ("const_mem_area", "arena_mem_area", "cache_mem_area")}
    return len(areas) == 1 and None not in areas


def sram_capacity_kib(memory_mode: str) -> float | None:
    """The SRAM a memory mode names (its ``arena_cache_size``), or None where it names none."""
    value = config_value(f"Memory_Mode.{memory_mode}", "arena_cache_size")
    return int(value) / 1024.0 if value else None


def install(src: Path, dst: Path) -> Path:
    """Copy one of Vela's files into the working folder (atomically)."""
    from dgh_deploy.artifacts import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


@cache
def supported_op_count(family: str) -> int | None:
    """How many TFLite builtin ops Vela can place on the NPU family ("EthosU55" also covers U65,
    "EthosU85"), each under its constraints; None without Vela."""
    try:
        from ethosu import regor
    except ImportError:
        return None
    return len(regor.tflite_operator_constraints(family))
