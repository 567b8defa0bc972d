"""Faults a user's machine or model can cause mid-job: a full disk, a diverging generation."""

from __future__ import annotations

import errno
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.cli import main
from dgh_deploy.errors import DGHError
from dgh_deploy.generation import DGHConfig
from dgh_deploy.generation.engine import Generator


def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "model.tflite"
    with pytest.raises(DGHError, match="no space left on the device while writing") as err, \
            atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_disk_full_during_the_job_keeps_out_and_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The report cannot be written: exit 2 with one line, --out as it was, the cache entry intact."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    job = ["--target", "sim", "--n-images", "8", "--iters", "5", "--quiet", "--no-human-report",
           "--cache-dir", str(cache), "--out", str(out)]
    assert main(job) == 0
    before = (out / "report.json").read_text()
    capsys.readouterr()
    real_write = pathlib.Path.write_text

    def full_disk(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.startswith(".report.json."):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    assert main(job) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device while writing" in err[0], err
    assert (out / "report.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    entries = list(cache.glob("*.npz"))
    assert len(entries) == 1 and len(CalibrationSet.load(entries[0])) == 16


def test_a_diverging_generation_stops_with_the_iteration_named() -> None:
    net = tiny_bn_net()
    with torch.no_grad():
        net[0].weight.mul_(1e30)  # BN inputs overflow float32: the loss is not finite
    gen = Generator(as_loaded(net), 4, 3, config=DGHConfig())
    with pytest.raises(DGHError, match=r"generation diverged at iteration 1: the loss is (nan|inf)"):
        gen.run()
    assert np.isfinite(gen.initial_images().numpy()).all()
