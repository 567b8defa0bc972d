"""report.json as typed records: the job fills them, everything reads them by attribute, and one
writer turns them into the versioned JSON (``report.schema.json``; a change of shape bumps
:data:`REPORT_SCHEMA_VERSION`).

The JSON keeps the shape it had as a dict: a key that was absent stays absent (an optional record
left ``None`` is not written), and a target's own section (:mod:`.section`, typed by the target) sits
beside the target's name, runtime and constraints. :meth:`Report.from_json` reads a written report back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgh_deploy.reporting.section import Facts, TargetSection, read_section, section_json, written

REPORT_SCHEMA_VERSION = "1.4"  # report.schema.json's version: a change of the JSON's shape bumps it
Scores = dict[str, Any]  # metric name -> points (0..100), and "images": how many were scored


@dataclass
class ModelEntry:
    name: str
    weights: str | None
    task: str
    imgsz: list[int]
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "task": self.task, "imgsz": list(self.imgsz),
                "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelEntry:
        return cls(d["name"], d.get("weights"), d["task"], list(d["imgsz"]), d["fingerprint"])


@dataclass
class TargetEntry:
    """The target, its hardware constraints, and its own section: what the target put in
    :attr:`~dgh_deploy.targets.BuildResult.info`, typed by the target (a dict where it declares no
    type), written beside the three."""

    name: str
    runtime: str
    constraints: dict[str, Any]
    facts: TargetSection | Facts = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "runtime": self.runtime, "constraints": self.constraints,
                **section_json(self.facts)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TargetEntry:
        own = {k: v for k, v in d.items() if k not in ("name", "runtime", "constraints")}
        return cls(d["name"], d["runtime"], d["constraints"], read_section(d["name"], own))


@dataclass
class BudgetEntry:
    """A generated set's budget: images, iterations, the coarse-to-fine schedule, and why that much."""

    n_images: int
    iters: int
    scales: list[list[float]]
    basis: str

    def to_json(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "iters": self.iters, "scales": [list(s) for s in self.scales],
                "basis": self.basis}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BudgetEntry:
        return cls(d["n_images"], d["iters"], [list(s) for s in d["scales"]], d["basis"])


@dataclass
class CalibrationEntry:
    source: str
    images: int
    held_out: int
    cached: bool
    settings: dict[str, Any]
    stats: dict[str, Any]
    budget: BudgetEntry | None = None  # only for a generated set (dgh, bns)

    def to_json(self) -> dict[str, Any]:
        return written([("source", self.source), ("images", self.images), ("held_out", self.held_out),
                         ("cached", self.cached), ("settings", self.settings), ("stats", self.stats),
                         ("budget", self.budget.to_json() if self.budget else None)])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CalibrationEntry:
        budget = BudgetEntry.from_json(d["budget"]) if d.get("budget") else None
        return cls(d["source"], d["images"], d["held_out"], d.get("cached", False), d.get("settings", {}),
                   d.get("stats", {}), budget)


@dataclass
class ArtifactEntry:
    path: str  # the file's name inside the output folder
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes}


@dataclass
class TensorSpec:
    """One input or output of the deployed file: its name, shape and type, and for an integer tensor
    the scale and zero point (``real = (q - zero_point) * scale``)."""

    name: str
    shape: list[int]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    meaning: str = ""  # what the values are (an output's decoding; the input's layout)

    def to_json(self) -> dict[str, Any]:
        return written([("name", self.name), ("shape", list(self.shape)), ("dtype", self.dtype),
                         ("scale", self.scale), ("zero_point", self.zero_point), ("meaning", self.meaning)])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], list(d["shape"]), d["dtype"], d.get("scale"), d.get("zero_point"), d.get("meaning", ""))


@dataclass
class FileIO:
    """A deployed file's input and outputs, as its runtime sees them (the target reads its file)."""

    input: TensorSpec
    outputs: list[TensorSpec]


@dataclass
class ContractEntry:
    """What device code must do to feed the deployed file and read it (since 1.3): the preprocessing
    the model was trained with, the file's input tensor, and each output's meaning."""

    file: str  # the artifact the contract is for (its name in the output folder)
    channel_order: str  # "RGB"
    layout: str  # the input's memory layout: "NHWC" or "NCHW"
    resize: str  # "letterbox" or "center_crop"
    pad_value: int | None  # the letterbox's fill
    mean: list[float]
    std: list[float]
    input: TensorSpec
    outputs: list[TensorSpec]
    steps: list[str]  # the device's recipe in order, in words, with the numbers filled in

    def to_json(self) -> dict[str, Any]:
        return written([("file", self.file), ("channel_order", self.channel_order), ("layout", self.layout),
                         ("resize", self.resize), ("pad_value", self.pad_value), ("mean", self.mean),
                         ("std", self.std), ("input", self.input.to_json()),
                         ("outputs", [o.to_json() for o in self.outputs]), ("steps", self.steps)])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContractEntry:
        return cls(d["file"], d["channel_order"], d["layout"], d["resize"], d.get("pad_value"), d["mean"], d["std"],
                   TensorSpec.from_json(d["input"]), [TensorSpec.from_json(o) for o in d["outputs"]], d["steps"])


@dataclass
class LayerEntry:
    index: int  # the op's position in the quantized model's execution order
    op: str
    layer: str  # the PyTorch module (or the tensor's name where the converter does not keep modules)
    sqnr_db: float
    float_range: list[float]  # [min, max] of the float tensor on the images
    scale: float  # the quantized tensor's scale (0: per-channel or float)
    zero_point: int
    fall_db: float | None = None  # how far the SQNR fell from the tensor before (the largest fall only)

    def to_json(self) -> dict[str, Any]:
        return written([("index", self.index), ("op", self.op), ("layer", self.layer), ("sqnr_db", self.sqnr_db),
                         ("float_range", self.float_range), ("scale", self.scale), ("zero_point", self.zero_point),
                         ("fall_db", self.fall_db)])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerEntry:
        return cls(d["index"], d["op"], d["layer"], d["sqnr_db"], list(d["float_range"]), d["scale"],
                   d["zero_point"], d.get("fall_db"))


@dataclass
class LayerDiagnosis:
    """Per-layer SQNR of the quantized model against float on held-out calibration images (since 1.3):
    the weakest layers and the largest fall; every tensor is in ``table`` (a CSV in the output folder)."""

    images: int
    runtime: str  # what ran both models, every tensor visible
    tensors: int
    table: str
    median_db: float | None
    worst: list[LayerEntry]
    largest_fall: LayerEntry | None = None
    noisiest_modules: list[str] = field(default_factory=list)  # the modules whose ops add the most noise
    advice: str | None = None  # the target's flag with those modules, where the metric dropped too far
    skipped: str | None = None  # why no layer could be compared (the target cannot see inside its model)

    def to_json(self) -> dict[str, Any]:
        return written([("images", self.images), ("runtime", self.runtime), ("tensors", self.tensors),
                         ("table", self.table), ("median_db", self.median_db),
                         ("worst", [w.to_json() for w in self.worst]),
                         ("largest_fall", self.largest_fall.to_json() if self.largest_fall else None),
                         ("noisiest_modules", self.noisiest_modules or None), ("advice", self.advice),
                         ("skipped", self.skipped)])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerDiagnosis:
        fall = LayerEntry.from_json(d["largest_fall"]) if d.get("largest_fall") else None
        return cls(d["images"], d["runtime"], d["tensors"], d.get("table", ""), d.get("median_db"),
                   [LayerEntry.from_json(w) for w in d.get("worst", [])], fall, d.get("noisiest_modules", []),
                   d.get("advice"), d.get("skipped"))


@dataclass
class DeviceScores:
    """The same checks on the device's own runtime, beside the desktop runtime that scored the job.

    ``quantized`` is the device's metric on at most ``image_limit`` real images, ``desktop`` the
    desktop runtime's on the same images, ``agreement`` the two compared image by image.
    """

    runtime: str
    desktop_runtime: str
    data_free: Scores | None = None
    data_free_agreement: Scores | None = None
    scored: bool = False  # real images were scored: the fields below are set (image_limit may be None)
    image_limit: int | None = None
    float_scores: Scores | None = None
    quantized: Scores | None = None
    desktop: Scores | None = None
    agreement: Scores | None = None
    drop: float | None = None
    desktop_minus_device: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = written([("runtime", self.runtime), ("desktop_runtime", self.desktop_runtime),
                        ("data_free", self.data_free), ("data_free_agreement", self.data_free_agreement)])
        if self.scored:
            out.update({"image_limit": self.image_limit, "float": self.float_scores, "quantized": self.quantized,
                        "desktop": self.desktop, "agreement": self.agreement, "drop": self.drop,
                        "desktop_minus_device": self.desktop_minus_device})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeviceScores:
        return cls(d["runtime"], d["desktop_runtime"], d.get("data_free"), d.get("data_free_agreement"),
                   "quantized" in d, d.get("image_limit"), d.get("float"), d.get("quantized"), d.get("desktop"),
                   d.get("agreement"), d.get("drop"), d.get("desktop_minus_device"))


@dataclass
class ValidatorComparison:
    """The deployed file scored by its framework's own validator and by the job, on the same images."""

    file: str
    nms: str
    ours: Scores
    theirs: Scores
    difference: float  # ours minus theirs, in points

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "nms": self.nms, "ours": self.ours, "ultralytics": self.theirs,
                "difference": self.difference}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ValidatorComparison:
        return cls(d["file"], d.get("nms", ""), d["ours"], d["ultralytics"], d["difference"])


@dataclass
class Metrics:
    """Float against quantized: on real labelled data (``float_scores``, ``quantized``, ``drop``) when
    the job had it, data-free on the held-out calibration images, and on the device runtime."""

    metric: str  # the task's headline metric: a key of every Scores
    data_free: Scores | None = None
    float_scores: Scores | None = None
    quantized: Scores | None = None
    drop: float | None = None
    device: DeviceScores | None = None
    validator: ValidatorComparison | None = None

    def value(self, scores: Scores | None) -> float | None:
        """The headline metric of ``scores`` (None when not measured)."""
        return None if scores is None else scores.get(self.metric)

    def to_json(self) -> dict[str, Any]:
        return written([("metric", self.metric), ("data_free", self.data_free), ("float", self.float_scores),
                         ("quantized", self.quantized), ("drop", self.drop),
                         ("device", self.device.to_json() if self.device else None),
                         ("ultralytics", self.validator.to_json() if self.validator else None)])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Metrics:
        device = DeviceScores.from_json(d["device"]) if d.get("device") else None
        validator = ValidatorComparison.from_json(d["ultralytics"]) if d.get("ultralytics") else None
        return cls(d["metric"], d.get("data_free"), d.get("float"), d.get("quantized"), d.get("drop"), device,
                   validator)


@dataclass
class GateCheckEntry:
    name: str  # the JUnit test case: "max_drop[1.0]", or the target's own check
    passed: bool
    verdict: str  # one line, "PASS: ..." or "FAIL: ..."

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "verdict": self.verdict}


@dataclass
class GateEntry:
    max_drop: float | None
    passed: bool
    verdict: str
    checks: list[GateCheckEntry]

    def to_json(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "passed": self.passed, "verdict": self.verdict,
                "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GateEntry:
        return cls(d.get("max_drop"), d["passed"], d["verdict"],
                   [GateCheckEntry(c["name"], c["passed"], c["verdict"]) for c in d.get("checks", [])])


@dataclass
class Report:
    model: ModelEntry
    target: TargetEntry
    calibration: CalibrationEntry
    artifacts: dict[str, ArtifactEntry]  # role -> file ("model", "cache", ...)
    metrics: Metrics
    times_s: dict[str, float]
    environment: dict[str, Any]
    config: dict[str, Any]
    gate: GateEntry | None = None
    contract: ContractEntry | None = None
    layers: LayerDiagnosis | None = None
    schema_version: str = REPORT_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """report.json's content."""
        return written([
            ("schema_version", self.schema_version), ("model", self.model.to_json()),
            ("target", self.target.to_json()), ("calibration", self.calibration.to_json()),
            ("artifacts", {role: a.to_json() for role, a in self.artifacts.items()}),
            ("metrics", self.metrics.to_json()), ("times_s", self.times_s), ("environment", self.environment),
            ("config", self.config), ("gate", self.gate.to_json() if self.gate else None),
            ("contract", self.contract.to_json() if self.contract else None),
            ("layers", self.layers.to_json() if self.layers else None),
        ])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Report:
        return cls(
            ModelEntry.from_json(d["model"]), TargetEntry.from_json(d["target"]),
            CalibrationEntry.from_json(d["calibration"]),
            {role: ArtifactEntry(a["path"], a["bytes"]) for role, a in d["artifacts"].items()},
            Metrics.from_json(d["metrics"]), d["times_s"], d["environment"], d.get("config", {}),
            GateEntry.from_json(d["gate"]) if d.get("gate") else None,
            ContractEntry.from_json(d["contract"]) if d.get("contract") else None,
            LayerDiagnosis.from_json(d["layers"]) if d.get("layers") else None, d["schema_version"],
        )

    @classmethod
    def read(cls, path: str | Path) -> Report:
        return cls.from_json(json.loads(Path(path).read_text()))
