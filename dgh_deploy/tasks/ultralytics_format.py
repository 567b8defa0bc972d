"""What makes a detector file Ultralytics' own: its layout choice and the metadata ``YOLO(path)`` reads.

Ultralytics' ``AutoBackend`` learns class names, stride, input size, task and batch from metadata
embedded in the exported file (for a ``.tflite``: a ``metadata.json`` entry of a zip archive
appended to the flatbuffer, as ``yolo export format=tflite`` writes it); without it the validator
guesses the size and names the classes 0..79. The metadata written here is what Ultralytics'
exporter writes, with our own author, description and the int8 flag set.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.tasks.detect_layout import DetectLayout, layout_of
from dgh_deploy.tasks.detector import decodes_on_host

LAYOUTS = ("maps", "split", "ultralytics")
LAYOUT_HELP = (
    "detector output layout: maps (tflite-int8's and ethos-u's default) ends the file at the head's raw "
    "maps, each with its own int8 scale, decoded on the host (the report's contract says how): the most "
    "accurate in int8, for microcontrollers and NPUs that run the whole file in integers; split "
    "(tensorrt-int8's default) decodes in the graph and writes boxes and scores as separate outputs; "
    "ultralytics writes the file 'yolo export' would (float32 I/O, one [1, 4+nc, anchors] output around "
    "the same int8 graph, Ultralytics' metadata), for YOLO(path), 'yolo predict' and 'yolo val'"
)
METADATA_ENTRY = "metadata.json"


def check_layout(layout: str, model: LoadedModel, target: str) -> None:
    """Refuse a layout the model cannot have, before anything is generated (``""``: the target's default)."""
    if not layout:
        return
    if layout not in LAYOUTS:
        raise DGHError(f"--layout '{layout}' is not a layout", f"use --layout {', '.join(LAYOUTS[:-1])} or "
                       f"{LAYOUTS[-1]}")
    if model.task != "detect":
        raise DGHError(f"--layout {layout} is for detectors, and '{model.name}' is a {model.task} model",
                       "drop --layout for this model")
    if layout != "maps" and not hasattr(model.module, "detect_layout"):
        raise DGHError(f"--layout {layout} needs boxes and scores inside the graph, and '{model.name}' is decoded "
                       "on the host (its file ends at the raw head maps)", "drop --layout for this model")


def built_layout(model: LoadedModel, layout: str) -> str:
    """The layout a build of ``model`` wrote, for the report: ``ultralytics`` where asked, else what the
    model's graph ends with (``maps`` or ``split``; ``split`` for a classifier)."""
    if layout == "ultralytics":
        return layout
    return "maps" if model.task == "detect" and decodes_on_host(model.module) else "split"


def with_layout(model: LoadedModel, layout: str, default: str = "split") -> LoadedModel:
    """``model`` with its deploy form in ``layout`` (``""``: ``default``): a built-in detector's graph ends
    at its raw maps for ``maps`` and decodes for the others. A shallow copy: the caller's module is left
    as it was. A protocol detector (maps only) and a classifier come back as they are."""
    layout = layout or default
    current = getattr(model.module, "detect_layout", None)
    if model.task != "detect" or not isinstance(current, DetectLayout) or current.maps == (layout == "maps"):
        return model
    module = copy.copy(model.module)  # shares every layer; only the layout attribute differs
    module.detect_layout = dataclasses.replace(current, maps=layout == "maps")
    return dataclasses.replace(model, module=module)


def model_layout(model: LoadedModel) -> DetectLayout:
    """The model's deploy layout, refused if Ultralytics' single output cannot be made from it."""
    from dgh_deploy.runtime.base import TorchRunner

    layout = layout_of(model.module, TorchRunner(model.module).infer(model.dummy_input().numpy()))
    if layout.objectness or not layout.split:
        raise DGHError(f"'{model.name}' has outputs {layout.describe()}; Ultralytics' layout is made from "
                       "boxes and final scores apart", "use the model's default layout, or --layout split")
    return layout


def class_names(model: LoadedModel, nc: int) -> dict[int, str]:
    """The model's class names as Ultralytics keys them; their indices where the model has none."""
    names = model.class_names or ()
    return {i: names[i] if i < len(names) else str(i) for i in range(nc)}


def ultralytics_metadata(model: LoadedModel, nc: int, stride: int) -> dict[str, Any]:
    """The metadata Ultralytics' exporter embeds, for a static batch-1, int8, no-NMS detector."""
    import importlib.metadata as md

    from dgh_deploy import __version__

    h, w = model.imgsz
    return {
        "description": f"dgh-deploy {__version__} int8 export of {model.name} (data-free calibration)",
        "author": "dgh-deploy",
        "date": datetime.now().astimezone().isoformat(),
        "version": md.version("ultralytics"),  # AutoBackend compares nothing with it; yolo export writes its own
        "stride": int(stride),
        "task": "detect",
        "head": "Detect",
        "batch": 1,
        "imgsz": [int(h), int(w)],
        "names": class_names(model, nc),
        "args": {"batch": 1, "half": False, "int8": True, "nms": False, "dynamic": False},
        "channels": 3,
        "end2end": False,
    }


def embed_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Append ``metadata`` as ``metadata.json`` in a zip archive after the model bytes (LiteRT reads past it)."""
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2))


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata :func:`embed_metadata` wrote; {} for a file without."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(METADATA_ENTRY))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        return {}
