"""``dgh-deploy``: the command line.

    dgh-deploy [--target T] [--model M] ...   the whole job (same as ``dgh-deploy deploy``)
    dgh-deploy generate --model M --out F.npz  only the calibration set
    dgh-deploy targets                         targets and their quantization constraints
    dgh-deploy models                          built-in architectures
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from dgh_deploy.errors import DGHError

if TYPE_CHECKING:
    from dgh_deploy.reporting.report import Metrics, Report

SUBCOMMANDS = ("deploy", "generate", "targets", "models")
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so generation saves its checkpoint the same way."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error (not usage + message)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}. see '{self.prog} --help'.", file=sys.stderr)
        sys.exit(2)


def _common_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="built-in name, torchvision:NAME, Ultralytics .pt/.yaml, or file.py:factory "
                                   "(default: the bundled demo CIFAR-10 ResNet-20)")
    g.add_argument("--weights", help="checkpoint file for --model")
    g.add_argument("--task", choices=("classify", "detect"), help="check the model is of this task")
    g.add_argument("--imgsz", type=int, help="input size (default: the model's own)")
    g = p.add_argument_group("calibration data")
    g.add_argument("--calib", default="dgh", help="dgh | bns | noise | real:PATH | FILE.npz (default dgh)")
    g.add_argument("--n-images", type=int, help="calibration images (default: 256 classify, 128 for classifiers "
                                                  "over 64 px on CPU; detect 64 CPU, 128 GPU)")
    g.add_argument("--iters", type=int, help="DGH iterations (default 500; on CPU 200 for detectors and "
                                             "classifiers over 64 px)")
    g.add_argument("--scales", type=_schedule, help="coarse to fine: FRACTION:SHARE of the input side and of the "
                                                    "iterations per stage, e.g. 0.25:0.7,0.5:0.2,1:0.1; 1 for the "
                                                    "full size only (default: by input size on CPU)")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to generate (default cpu)")
    g.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                   help="generation arithmetic: bf16 autocast (statistics and images stay float32/64) where "
                        "the CPU or GPU has native bfloat16; auto (the default) picks it there, fp32 elsewhere")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue an interrupted generation from its checkpoint")
    _verbosity(p)


def _schedule(text: str) -> tuple[tuple[float, float], ...]:
    from dgh_deploy.generation.scales import parse_schedule

    try:
        return parse_schedule(text)
    except DGHError as err:  # argparse prints it on one line, as every other usage error
        raise argparse.ArgumentTypeError(f"{err.problem}; {err.fix}") from err


def _verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true", help="debug logs and tracebacks")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def build_parser(command: str) -> argparse.ArgumentParser:
    from dgh_deploy.targets import DEFAULT_TARGET

    prog = "dgh-deploy" if command == "deploy" else f"dgh-deploy {command}"
    if command == "generate":
        p = Parser(prog=prog, description="Generate a calibration set (DGH or a baseline).")
        _common_model_args(p)
        p.add_argument("--out", required=True, help="output .npz: array 'images' (N x 3 x H x W float32, model "
                                                    "input space) and JSON 'metadata'")
        return p
    if command in ("targets", "models"):
        p = Parser(prog=prog, description=f"List the {command}.")
        _verbosity(p)
        return p
    p = Parser(
        prog=prog, description="Generate calibration data, quantize for a hardware target, verify, report.",
        epilog="Other commands: 'dgh-deploy generate', 'dgh-deploy targets', 'dgh-deploy models'.",
    )
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help=f"hardware target (default {DEFAULT_TARGET}; see 'targets')")
    _common_model_args(p)
    g = p.add_argument_group("verification and output")
    g.add_argument("--val-data", help="real labelled data: an ImageFolder (classify) or a data YAML (detect)")
    g.add_argument("--val-limit", type=int, help="evaluate on this many validation images (spread evenly)")
    g.add_argument("--holdout", type=int, help="images held out of calibration for the data-free check "
                                               "(default n/8, at least 8)")
    g.add_argument("--out", help="output folder (default out/<model>-<target>)")
    g.add_argument("--max-drop", type=float, help="fail (exit 3) if the metric drops more than this many points")
    g.add_argument("--junit", help="also write the verdict as JUnit XML to this file (for CI)")
    g.add_argument("--no-cache", action="store_true", help="generate again even if a cached set matches")
    g.add_argument("--cache-dir", help="where generated sets are cached (default ~/.cache/dgh-deploy)")
    g.add_argument("--no-human-report", action="store_true", help="skip report.md and its pictures")
    g = p.add_argument_group("quantization options (each target refuses what it cannot honour)")
    g.add_argument("--per-tensor", action="store_true", help="per-tensor weights instead of per-channel")
    g.add_argument("--bits", default="W8A8", help="weight and activation bits, e.g. W8A8, W4A8, W8A4 "
                                                  "('dgh-deploy targets' lists what each runs)")
    g.add_argument("--act-range", default="", help="activation range method: minmax | mse | percentile | entropy")
    g.add_argument("--percentile", type=float, default=None,
                   help="with --act-range percentile: the share of values inside the range (default 99.99, or "
                        "the target's own default for detectors)")
    g.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 8)),
                   help="runtime threads for verification")
    _target_flags(p)
    return p


def _target_flags(p: argparse.ArgumentParser) -> None:
    """Each target's own options, in a group named after it (each target folder declares them); a flag
    two targets declare (--layout) is added once, in the first one's group."""
    from dgh_deploy.targets import all_targets

    added: set[str] = set()
    for name, cls in all_targets().items():
        own = [f for f in cls.flags if f.flag not in added]
        if not own:
            continue
        g = p.add_argument_group(f"{name} options")
        for f in own:
            added.add(f.flag)
            if f.type is None:
                g.add_argument(f.flag, dest=f.dest, action="store_const", const=f.switched, default=None,
                               help=f.help)
            else:
                g.add_argument(f.flag, dest=f.dest, type=f.type, choices=f.choices or None, default=None,
                               metavar=f.metavar, help=f.help)


def target_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen target's own flags as constructor keywords; a flag of another target is refused."""
    from dgh_deploy.targets import all_targets

    owners: dict[str, list[str]] = {}
    for name, cls in all_targets().items():
        for f in cls.flags:
            owners.setdefault(f.flag, []).append(name)
    settings: dict[str, Any] = {}
    for name, cls in all_targets().items():
        for f in cls.flags:
            value = getattr(args, f.dest, None)
            if value is None or (name != args.target and args.target in owners[f.flag]):  # its other owner
                continue
            if name != args.target:
                who = " or ".join(owners[f.flag])
                raise DGHError(f"{f.flag} is an option of --target {who}, not of {args.target}",
                               f"drop {f.flag}, or use --target {owners[f.flag][0]}")
            settings[f.dest] = value
    return settings


def parse_bits(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"[wW](\d+)[aA](\d+)", text.strip())
    if not m:
        raise DGHError(f"--bits '{text}' is not of the form W<bits>A<bits>", "use e.g. --bits W8A8 or --bits W4A8")
    w, a = int(m.group(1)), int(m.group(2))
    if not (2 <= w <= 16 and 2 <= a <= 16):
        raise DGHError(f"--bits {text}: widths must be between 2 and 16", "use e.g. --bits W8A8")
    return w, a


def _setup_logging(args: argparse.Namespace) -> None:
    """Our log lines on stderr; third-party chatter (TensorFlow, Ultralytics, warnings) only with --verbose."""
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if args.verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when TensorFlow is first imported
    os.environ.setdefault("YOLO_VERBOSE", "False")  # Ultralytics' settings banner and validator tables
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def run_deploy(args: argparse.Namespace) -> int:
    from dgh_deploy.api import deploy
    from dgh_deploy.generation.distributed import requested
    from dgh_deploy.targets import TargetOptions

    if requested():  # every rank would run the whole job and write the same folder
        raise DGHError("torchrun runs 'dgh-deploy generate' only, not the whole job",
                       "generate the set under torchrun, then run the job once with --calib FILE.npz")

    w_bits, a_bits = parse_bits(args.bits)
    options = TargetOptions(
        per_tensor=args.per_tensor, weight_bits=w_bits, act_bits=a_bits, act_range=args.act_range,
        percentile=args.percentile, threads=args.threads, device=args.device,
    )
    out = args.out or os.path.join("out", f"{_slug(args.model or 'demo')}-{args.target}")
    report = deploy(
        target=args.target, target_settings=target_settings(args), model=args.model, weights=args.weights,
        task=args.task, imgsz=args.imgsz,
        calib=args.calib, precision=args.precision, n_images=args.n_images, iters=args.iters, scales=args.scales,
        holdout=args.holdout,
        val_data=args.val_data, val_limit=args.val_limit, out=out, device=args.device, seed=args.seed,
        resume=args.resume, max_drop=args.max_drop, junit=args.junit, use_cache=not args.no_cache,
        cache_dir=args.cache_dir, human_report=not args.no_human_report, progress=not args.quiet, options=options,
    )
    print(summarise(report.report, out))
    return 0


def summarise(report: Report, out: str) -> str:
    """The closing lines: the files, the scores, and what the target adds."""
    from dgh_deploy.targets import get_target

    m = report.metrics
    target = get_target(report.target.name)
    files = [report.artifacts[role].path for role in target.summary_artifacts if role in report.artifacts]
    paths = [os.path.join(out, name) for name in [*files, "report.json"]]
    lines = [f"wrote {', '.join(paths[:-1])} and {paths[-1]}"]
    metric = m.metric
    if m.float_scores is not None and m.quantized is not None:
        lines.append(f"{metric}: float {m.float_scores[metric]:.2f}, quantized {m.quantized[metric]:.2f} "
                     f"(drop {m.drop:.2f}) on {int(m.float_scores.get('images', 0))} real images")
    if m.data_free is not None:
        df = ", ".join(f"{k} {v:.2f}" for k, v in m.data_free.items() if k != "images")
        lines.append(f"data-free check on {int(m.data_free['images'])} held-out calibration images: {df}")
    return "\n".join(lines + _validator_lines(m) + target.summary_lines(report) + _device_lines(m)
                     + _layer_lines(report))


def _layer_lines(report: Report) -> list[str]:
    """The weakest layer, where the job could compare them."""
    d = report.layers
    if d is None or not d.worst:
        return []
    w = d.worst[0]
    return [f"weakest layer: {w.layer} ({w.op}) {w.sqnr_db:.1f} dB SQNR, median {d.median_db} dB over "
            f"{d.tensors} tensors (report.md; {d.table})", *([d.advice] if d.advice else [])]


def _validator_lines(m: Metrics) -> list[str]:
    """The deployed file under its framework's own validator, beside the job's score of it."""
    u = m.validator
    if u is None:
        return []
    metric = m.metric
    return [f"yolo val on {u.file}: {metric} {u.theirs[metric]:.2f}; dgh-deploy on the same file "
            f"and {int(u.ours.get('images', 0))} images with yolo val's NMS: {u.ours[metric]:.2f} "
            f"(difference {u.difference:+.2f})"]


def _device_lines(m: Metrics) -> list[str]:
    """The same file on the device's own runtime, against the desktop runtime."""
    dev = m.device
    if dev is None:
        return []
    parts = []
    if dev.quantized is not None and dev.desktop is not None:
        parts.append(f"{m.metric} {dev.quantized[m.metric]:.2f} on {int(dev.quantized.get('images', 0))} real "
                     f"images ({dev.desktop_runtime} {dev.desktop[m.metric]:.2f} on the same)")
    agree = dev.agreement or dev.data_free_agreement or {}
    parts += [f"{k} with {dev.desktop_runtime} {v:.2f}" for k, v in agree.items() if k.endswith("agreement")]
    return [f"{dev.runtime}: {'; '.join(parts)}"] if parts else []


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(text.split(":")[0]).removesuffix(".py")) or "model"


def run_generate(args: argparse.Namespace) -> int:
    from dgh_deploy.api import generate

    if not args.out.endswith(".npz"):
        raise DGHError(f"--out '{args.out}' must end in .npz", "name the output file like calib.npz")
    calib = generate(
        model=args.model, weights=args.weights, n_images=args.n_images, iters=args.iters, imgsz=args.imgsz,
        task=args.task, calib=args.calib, device=args.device, seed=args.seed, out=args.out, resume=args.resume,
        progress=not args.quiet, precision=args.precision, scales=args.scales,
    )
    if calib is None:
        return 0  # a torchrun rank other than 0: rank 0 writes and reports
    n, _, h, w = calib.images.shape
    print(f"wrote {args.out}: {n} images {h}x{w} ({calib.source})")
    return 0


def run_targets(args: argparse.Namespace) -> int:
    from dgh_deploy.targets import all_targets

    for name, cls in all_targets().items():
        target = cls()
        missing = target.missing_requirements()
        state = f"  [needs: {', '.join(missing)}]" if missing else ""
        constraints = target.constraints
        print(f"{name:15s} {cls.summary}{state}")
        print(f"{'':15s} constraints: {constraints.describe()}")
        if constraints.notes:
            print(f"{'':15s} notes: {constraints.notes}")
        print(f"{'':15s} verified on: {cls.runtime}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from dgh_deploy.models import ARCHITECTURES

    for name, arch in ARCHITECTURES.items():
        print(f"{name:16s} {arch.task:9s} {arch.imgsz[0]}x{arch.imgsz[1]}  {arch.description}")
    print("also: torchvision:NAME --weights FILE, an Ultralytics .pt or .yaml, path/to/file.py:factory")
    return 0


COMMANDS = {"deploy": run_deploy, "generate": run_generate, "targets": run_targets, "models": run_models}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "deploy"
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed on one line
        return int(stop.code or 0)
    _setup_logging(args)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[command](args)
    except DGHError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"dgh-deploy: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"dgh-deploy: {what}; the output folder is unchanged. an interrupted generation continues "
              "where it stopped: rerun the same command with --resume", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OSError as exc:  # a file the user named or a disk they chose: theirs to fix
        if args.verbose:
            traceback.print_exc()
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"dgh-deploy: error: cannot use{where} ({exc.strerror or type(exc).__name__}). "
              "check the path, its permissions and the free disk space.", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"dgh-deploy: internal error: {type(exc).__name__}: {first} (rerun with --verbose for the traceback; "
              "please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
