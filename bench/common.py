"""What every bench script shares: options, asset checks, the machine line and result files.

Nothing here runs at import time and nothing heavy is imported at module level (torch is
imported where it is used), so ``--help`` and ``import bench.common`` stay fast.

The shared assets folder is ``--assets``, else the environment variable ``DGH_ASSETS``, else
``../shared/assets`` beside the repository. Paths under it (weights, test and calibration
images) are options whose defaults follow ``--assets``: :meth:`BenchParser.parse` fills them in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
WORK = REPO / "out"
ASSETS_ENV = "DGH_ASSETS"

R20_WEIGHTS = "cifar10/resnet20-12fca82f.th"
R56_WEIGHTS = "cifar10/resnet56-4bfd9763.th"
CIFAR_TEST = "cifar10/test"
CIFAR_CALIB = "cifar10/calib"


def default_assets() -> Path:
    """``$DGH_ASSETS`` if set, else ``../shared/assets`` beside the repository."""
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else REPO.parent / "shared" / "assets"


class BenchParser(argparse.ArgumentParser):
    """The argument parser of one bench script: its docstring as the description, ``--assets``,
    and helpers for the options several scripts share. Use :meth:`parse`, not ``parse_args``:
    it resolves ``--assets`` and the asset paths left at their defaults."""

    def __init__(self, name: str, doc: str | None) -> None:
        super().__init__(prog=f"python -m bench.{name}", description=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.name = f"bench.{name}"
        self.asset_defaults: dict[str, str] = {}
        self.add_argument("--assets", default=None,
                          help=f"the shared assets folder (default: ${ASSETS_ENV}, else ../shared/assets beside "
                               "the repository)")

    def add_asset_argument(self, flag: str, relative: str, help: str = "", **kwargs: Any) -> None:
        """An option (or positional) naming a file or folder; its default is ``ASSETS/relative``."""
        text = f"{help} (default: ASSETS/{relative})" if help else f"default: ASSETS/{relative}"
        action = self.add_argument(flag, default=None, help=text, **kwargs)
        self.asset_defaults[action.dest] = relative

    def add_model(self, model: str = "cifar_resnet20", weights: str = R20_WEIGHTS) -> None:
        self.add_argument("--model", default=model)
        self.add_asset_argument("--weights", weights)

    def add_threads(self, default: int | None = 2) -> None:
        """``--threads``; ``None`` means every CPU core."""
        self.add_argument("--threads", type=int, default=default or os.cpu_count() or 1, help="torch CPU threads")

    def add_device(self, default: str = "cpu") -> None:
        self.add_argument("--device", default=default)

    def add_seeds(self, default: str = "0,1,2") -> None:
        self.add_argument("--seeds", default=default, help="comma-separated seeds")

    def add_json(self, default: str | None = None, help: str = "also write the results here (JSON)") -> None:
        self.add_argument("--json", default=default, help=help)

    def add_generation_run(self) -> None:
        """The model, budget and data options every generation bench shares."""
        self.add_model()
        self.add_argument("--imgsz", type=int, default=None, help="input size (default: the model's own)")
        self.add_argument("--n-images", type=int, default=256)
        self.add_argument("--iters", type=int, default=500)
        self.add_device()
        self.add_threads()
        self.add_argument("--seed", type=int, default=0)
        self.add_asset_argument("--val-data", CIFAR_TEST)
        self.add_asset_argument("--real-calib", CIFAR_CALIB)
        self.add_argument("--val-limit", type=int, default=None,
                          help="evaluate on this many test images (spread evenly)")

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        args = self.parse_args(argv)
        args.assets = Path(args.assets) if args.assets else default_assets()
        for dest, relative in self.asset_defaults.items():
            if getattr(args, dest) is None:
                setattr(args, dest, str(args.assets / relative))
        return args

    def fail(self, message: str) -> int:
        """Print one error line and return exit status 2."""
        print(f"{self.name}: {message}", file=sys.stderr)
        return 2

    def check_assets(self, *paths: str | Path | None) -> int:
        """0 when every path exists; else one error line naming the missing ones, and 2.
        ``None`` entries (paths the run does not need) are skipped."""
        missing = list(dict.fromkeys(str(p) for p in paths if p is not None and not Path(p).exists()))
        if not missing:
            return 0
        return self.fail(f"missing asset{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
                         f"(pass --assets or set {ASSETS_ENV}; the assets folder's README.md lists its files)")


def split_list(text: str) -> list[str]:
    """``a,b,c`` -> ``['a', 'b', 'c']`` (the comma-separated options)."""
    return text.split(",")


def parse_seeds(text: str) -> list[int]:
    return [int(s) for s in split_list(text)]


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def device_label(device: str, threads: int) -> str:
    """The ``device`` of the generation benches' result files: the GPU's name, or the CPU threads."""
    import torch

    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {threads} threads"


# The environment that narrows what torch (ATen, inductor) and oneDNN run to a smaller instruction set.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def machine() -> str:
    """The machine line of the job benches' result files: cores, CPU model and its widest vector
    units (one cloud "AMD EPYC" was Zen 4 with AVX-512 and bf16, another AVX2 only), Python."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    units = next((name for flag, name in (("amx_bf16", "AVX-512 and AMX with bf16"),
                                          ("avx512_bf16", "AVX-512 with bf16"), ("avx512f", "AVX-512"),
                                          ("avx2", "AVX2")) if flag in flags), "")
    caps = [f"{name}={os.environ[name]}" for name in ISA_CAPS if os.environ.get(name)]
    capped = f", capped by {' '.join(caps)}" if caps else ""  # a machine standing in for a narrower one
    return (f"{os.cpu_count()}-core CPU ({cpu}{', ' + units if units else ''}{capped}), "
            f"Python {platform.python_version()}")


def load_average() -> float | None:
    """The 1-minute load average (Linux /proc/loadavg), noted beside a timing on a shared machine;
    None elsewhere."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def json_default(obj: object) -> object:
    """numpy scalars and arrays as numbers and lists, paths as strings, anything else as its ``str``."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file handle on a temporary file beside ``path``, renamed into place only if the block
    succeeds: a stopped run never leaves a half-written result or image set."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; result files are shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (the Markdown tables)."""
    with atomic_open(path) as f:
        f.write(text)


def write_result(path: str | Path, data: Any, indent: int = 2,
                 default: Callable[[Any], object] = json_default) -> None:
    """Write ``data`` as JSON and a newline to ``path``, atomically. Each script keeps the indent
    its result files have always had."""
    write_text(path, json.dumps(data, indent=indent, default=default) + "\n")


def read_state(path: str | Path, empty: dict) -> dict:
    """The JSON state of a resumable bench (``empty`` when there is none yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else empty


def run_pending(json_path: str | Path, state: dict, table: str, todo: list[tuple],
                build: Callable[..., Any], shown: Callable[[Any], str], label: Callable[..., str] | None = None,
                indent: int = 2) -> None:
    """Build each item of ``todo`` (its key parts) and keep the result in ``state[table]`` under the parts
    joined by ``|``, writing ``json_path`` after every build: a stopped bench, run again, continues from
    its file. ``build(*item)`` returns what is kept; each line shows ``label(*item)`` (the parts, by
    default) and ``shown(result)``."""
    for i, item in enumerate(todo, 1):
        t0 = time.perf_counter()
        state[table]["|".join(str(part) for part in item)] = result = build(*item)
        write_result(json_path, state, indent=indent)
        name = label(*item) if label else " ".join(str(part) for part in item)
        print(f"[{i}/{len(todo)}] {name}: {shown(result)} ({time.perf_counter() - t0:.0f} s)", flush=True)


def pick_label(method: str, source: str, seed: int, pick: int) -> str:
    """A seeds-x-picks bench's build, as its progress lines name it."""
    return f"{method} {source} seed {seed} pick {pick}"


def set_path(folder: Path, source: str, seed: int) -> Path:
    """Where the seed benches keep one generated (source, seed) set: ``SOURCE_seedN.npz``."""
    return folder / f"{source}_seed{seed}.npz"


@dataclass(frozen=True)
class Case:
    """One of the shared models with its data: what a full ``dgh-deploy`` job needs."""

    model: str
    weights: str
    val_data: str
    real: str
    imgsz: int | None = None
    n_images: int | None = None

    def files(self, real: bool = True) -> list[str]:
        """The asset paths a job on this case reads (``real``: also the real calibration folder)."""
        return [self.weights, self.val_data, *([self.real] if real else [])]


def cases(assets: Path) -> dict[str, Case]:
    c10 = assets / "cifar10"
    return {
        "cifar_resnet20": Case("cifar_resnet20", str(assets / R20_WEIGHTS), str(c10 / "test"), str(c10 / "calib")),
        "cifar_resnet56": Case("cifar_resnet56", str(assets / R56_WEIGHTS), str(c10 / "test"), str(c10 / "calib")),
        "yolov5n": Case("yolov5n", str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt"),
                        str(assets / "coco128" / "coco128.yaml"), str(assets / "coco128" / "images" / "train2017"),
                        imgsz=320, n_images=64),
    }


def check_cases(ap: BenchParser, all_cases: dict[str, Case], models: Iterable[str], real: bool) -> int:
    """0 when every model is a known case with its assets present; else one error line and 2."""
    unknown = [m for m in models if m not in all_cases]
    if unknown:
        return ap.fail(f"unknown model {', '.join(unknown)} (one of {', '.join(all_cases)})")
    return ap.check_assets(*(f for m in models for f in all_cases[m].files(real)))


def run_on_case(ap: BenchParser, args: argparse.Namespace, run: Callable[[argparse.Namespace, Case], object],
                real: bool) -> int:
    """``run(args, case)`` for ``args.model``'s case when it is known and its assets are there; the exit code."""
    all_cases = cases(args.assets)
    if rc := check_cases(ap, all_cases, [args.model], real=real):
        return rc
    run(args, all_cases[args.model])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Where the benches look for the shared assets and whether every model's files are there."""
    ap = BenchParser("common", "Print the machine line and the assets folder the benches use, and check that every\n"
                     "shared model's weights, validation data and real calibration images are there.")
    args = ap.parse(argv)
    print(f"machine: {machine()}")
    print(f"assets: {args.assets}")
    all_cases = cases(args.assets)
    if rc := check_cases(ap, all_cases, list(all_cases), real=True):
        return rc
    print(f"all files of {', '.join(all_cases)} found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
