"""DGH generator: exact joint statistics over chunks, resume, bad inputs, memory."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_generation_models import as_loaded, tiny_bn_net
from torch import nn

from dgh_deploy.errors import DGHError
from dgh_deploy.generation import DGHConfig, default_budget, draws, make_calibration_set
from dgh_deploy.generation.engine import Generator
from dgh_deploy.generation.stats import bn_layers
from dgh_deploy.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

REPO = Path(__file__).resolve().parents[1]


Stats = tuple[tuple[float, ...], tuple[float, ...]]


def _reference_loss(model: nn.Module, x: torch.Tensor, mult: float, eps: float = 1e-6,
                    input_target: Stats = ((0.0,) * 3, (1.0,) * 3)) -> torch.Tensor:
    """DGH's loss written the plain way: one batch, BN-input hooks, torch's own mean/var."""
    acts: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, i, n=n: acts.__setitem__(n, i[0])) for n, m in bn_layers(model)]
    out = model(x)
    for h in hooks:
        h.remove()

    def term(a: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        mu, var = a.mean((0, 2, 3)), a.var((0, 2, 3), correction=0)
        return ((mu - mean) ** 2).mean() + ((torch.sqrt(var + eps) - std) ** 2).mean()

    terms = [term(x, *(torch.tensor(v, dtype=x.dtype) for v in input_target))]
    terms += [term(acts[n], m.running_mean, m.running_var.sqrt()) for n, m in bn_layers(model)]
    bn = sum(terms) / len(terms)
    stretch = -(out.amax(1) - out.amin(1)).mean()
    return bn + mult * stretch


@pytest.mark.parametrize(("chunk", "retain"), [(4, False), (4, True), (16, False)])
def test_chunked_gradient_equals_one_batch(chunk: int, retain: bool) -> None:
    """Both exact paths (two passes, or every chunk's graph retained) give the one-batch loss
    and gradient."""
    model = as_loaded(tiny_bn_net().double())
    cfg = DGHConfig(output_loss_multiplier=1e-2)
    whole = Generator(model, 16, 5, seed=3, config=cfg, dtype=torch.float64, chunk=16)
    chunked = Generator(model, 16, 5, seed=3, config=cfg, dtype=torch.float64, chunk=chunk, retain=retain)
    assert chunked.chunk == chunk and chunked.retain == (retain or chunk == 16)
    grads, losses = [], []
    for gen in (whole, chunked):
        x = gen.initial_images().double().requires_grad_(True)
        bn, out = gen.compute_grads(x, iteration=2)
        grads.append(x.grad.clone())
        losses.append(bn + cfg.output_loss_multiplier * out)

    # Independent reference: the same augmented views through the untouched model.
    x = whole.initial_images().double().requires_grad_(True)
    view = whole.train_view(x, 0, 16, whole.augment_draws(2)).contiguous()
    ref = _reference_loss(model.module, view, cfg.output_loss_multiplier)
    ref.backward()
    for g, loss in zip(grads, losses, strict=True):
        assert loss == pytest.approx(ref.item(), rel=1e-9)
        assert torch.allclose(g, x.grad, rtol=1e-5, atol=1e-5 * x.grad.abs().max().item())
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(("normalised", "prior", "natural"), [
    (True, "auto", False), (False, "auto", True), (False, "model", False), (False, "natural", True)])
def test_input_prior(normalised: bool, prior: str, natural: bool) -> None:
    """A model fed raw 0..1 pixels gets natural-image statistics as its input target and start;
    a normalising model keeps MCT's mean 0 / std 1 (unless asked otherwise)."""
    model = as_loaded(tiny_bn_net().double())
    if not normalised:
        model = replace(model, preprocessing=Preprocessing())
    cfg = DGHConfig(output_loss_multiplier=1e-2, input_prior=prior)
    gen = Generator(model, 64, 5, seed=1, config=cfg, dtype=torch.float64, chunk=64)
    target = (IMAGENET_MEAN, IMAGENET_STD) if natural else ((0.0,) * 3, (1.0,) * 3)
    x0 = gen.initial_images()
    assert np.allclose(x0.mean((0, 2, 3)), target[0], atol=0.03)  # 20,736 draws per channel
    assert np.allclose(x0.std((0, 2, 3)), target[1], rtol=0.03)

    x = x0.double().requires_grad_(True)
    bn, _ = gen.compute_grads(x, iteration=0)
    view = gen.train_view(x.detach(), 0, 64, gen.augment_draws(0)).contiguous()
    ref = _reference_loss(model.module, view, 0.0, input_target=target)
    assert bn == pytest.approx(ref.item(), rel=1e-9)


def test_unknown_input_prior_is_refused() -> None:
    with pytest.raises(DGHError, match="unknown input prior 'imagenet'"):
        Generator(as_loaded(tiny_bn_net()), 4, 1, config=DGHConfig(input_prior="imagenet"))


def test_per_batch_statistics_are_each_batchs_own() -> None:
    """The ablation switch (``joint_stats=False``): each batch of 4 matches the BN statistics on
    its own, exactly the plain one-batch loss per batch, and so not the whole-set gradient."""
    model = as_loaded(tiny_bn_net().double())
    cfg = replace(DGHConfig(output_loss_multiplier=1e-2), joint_stats=False, batch_size=4)
    per_batch = Generator(model, 16, 5, seed=3, config=cfg, dtype=torch.float64)
    x = per_batch.initial_images().double().requires_grad_(True)
    bn, out = per_batch.compute_grads(x, iteration=2)
    got = x.grad.clone()

    ref_x = per_batch.initial_images().double().requires_grad_(True)
    drawn = per_batch.augment_draws(2)
    batch_losses = [_reference_loss(model.module, per_batch.train_view(ref_x, lo, lo + 4, drawn).contiguous(),
                                    cfg.output_loss_multiplier) for lo in range(0, 16, 4)]
    sum(batch_losses).backward()
    assert torch.allclose(got, ref_x.grad, rtol=1e-5, atol=1e-5 * ref_x.grad.abs().max().item())
    assert bn + cfg.output_loss_multiplier * out == pytest.approx(float(sum(batch_losses).detach()) / 4, rel=1e-9)

    joint = Generator(model, 16, 5, seed=3, config=replace(cfg, joint_stats=True), dtype=torch.float64)
    y = joint.initial_images().double().requires_grad_(True)
    joint.compute_grads(y, iteration=2)
    assert not torch.allclose(got, y.grad, rtol=1e-3)


def test_augmentation_draws_depend_on_index_only() -> None:
    model = as_loaded(tiny_bn_net())
    gen = Generator(model, 12, 3, seed=1)
    x = gen.initial_images()
    split = [draws.augment_draws(1, 7, np.arange(a, b), gen.pipeline.extra) for a, b in ((0, 5), (5, 12))]
    for i, whole in enumerate(gen.augment_draws(7)):
        assert torch.equal(torch.cat([part[i] for part in split]), whole)
    view = gen.train_view(x, 0, 12, gen.augment_draws(7))
    assert not torch.equal(view, gen.train_view(x, 0, 12, gen.augment_draws(8)))  # new draws each iteration
    again = Generator(model, 20, 3, seed=1).initial_images()[:12]
    assert torch.equal(again, x)  # image i's noise depends on (seed, i), not on the set size


def test_generate_shape_range_and_stats() -> None:
    model = as_loaded(tiny_bn_net())
    cs = make_calibration_set(model, "dgh", 10, 30, seed=0, progress=False)
    assert cs.images.shape == (10, 3, 16, 16) and cs.images.dtype == np.float32
    lo, hi = model.preprocessing.pixel_range()
    assert (cs.images >= lo.reshape(1, 3, 1, 1) - 1e-6).all() and (cs.images <= hi.reshape(1, 3, 1, 1) + 1e-6).all()
    curve = cs.stats["loss_curve"]
    assert len(curve) == 30 and set(curve[0]) == {"total", "bn", "output"}
    assert curve[-1]["bn"] < 0.5 * curve[0]["bn"]  # the BN loss goes down
    json.dumps(cs.settings)
    json.dumps(cs.stats)
    assert cs.settings["lr"] == 16.0 and cs.settings["extra_pixels_resolved"] == 2


class _Interrupt:
    """Raises KeyboardInterrupt on the n-th gradient computation, as Ctrl-C would."""

    def __init__(self, gen: Generator, at: int) -> None:
        self.inner, self.at, self.calls = gen.compute_grads, at, 0
        gen.compute_grads = self  # type: ignore[method-assign]

    def __call__(self, images: torch.Tensor, iteration: int) -> tuple[float, float]:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner(images, iteration)


def test_resume_gives_the_uninterrupted_images(tmp_path: Path) -> None:
    model = as_loaded(tiny_bn_net())
    cfg = DGHConfig(checkpoint_every=4, patience=1)  # small patience: the schedule state matters
    full = make_calibration_set(model, "dgh", 8, 14, seed=5, config=cfg, progress=False)

    ckpt = tmp_path / "gen.ckpt"
    gen = Generator(model, 8, 14, seed=5, config=cfg)
    _Interrupt(gen, at=7)
    with pytest.raises(KeyboardInterrupt):
        gen.run(checkpoint=ckpt, resume=False, progress=False)
    state = torch.load(ckpt, weights_only=True)
    assert state["iteration"] == 6  # saved on interrupt, not only at the last multiple of 4

    resumed = make_calibration_set(model, "dgh", 8, 14, seed=5, config=cfg, checkpoint=ckpt, resume=True,
                                   progress=False)
    np.testing.assert_array_equal(resumed.images, full.images)
    assert resumed.stats["loss_curve"] == full.stats["loss_curve"]

    with pytest.raises(DGHError, match="other generation settings"):
        make_calibration_set(model, "dgh", 8, 14, seed=6, config=cfg, checkpoint=ckpt, resume=True, progress=False)


@pytest.mark.parametrize("retain", [False, True])
def test_resume_keeps_the_interrupted_runs_layout(tmp_path: Path, retain: bool) -> None:
    """A run resumed under another chunking would sum in another order; it takes the saved one."""
    model = as_loaded(tiny_bn_net())
    cfg = DGHConfig(checkpoint_every=4)
    full = Generator(model, 8, 10, seed=2, config=cfg, chunk=3, retain=retain).run(progress=False)
    ckpt = tmp_path / "gen.ckpt"
    gen = Generator(model, 8, 10, seed=2, config=cfg, chunk=3, retain=retain)
    _Interrupt(gen, at=6)
    with pytest.raises(KeyboardInterrupt):
        gen.run(checkpoint=ckpt, resume=False, progress=False)
    again = Generator(model, 8, 10, seed=2, config=cfg)  # its own choice would be one chunk
    assert (again.chunk, again.retain) == (8, True)
    resumed = again.run(checkpoint=ckpt, resume=True, progress=False)
    assert (again.chunk, again.retain) == (3, retain)
    np.testing.assert_array_equal(resumed.images, full.images)


def test_no_batchnorm_is_refused() -> None:
    model = as_loaded(tiny_bn_net(with_bn=False))
    for source in ("dgh", "bns"):
        with pytest.raises(DGHError, match="no BatchNorm layer"):
            make_calibration_set(model, source, 4, 2, progress=False)


class _NoLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_bn_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).sum(1)  # N, not N x C: no output layer to stretch


def test_missing_output_layer_is_refused() -> None:
    with pytest.raises(DGHError, match="no output layer"):
        make_calibration_set(as_loaded(_NoLogits()), "dgh", 4, 2, progress=False)


def test_wrong_image_size_is_refused() -> None:
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    with pytest.raises(DGHError, match="does not take a 1x3x20x20 image"):
        make_calibration_set(as_loaded(fixed, imgsz=(20, 20)), "dgh", 4, 2, progress=False)


def test_unknown_source_and_device() -> None:
    model = as_loaded(tiny_bn_net())
    with pytest.raises(DGHError, match="unknown calibration source"):
        make_calibration_set(model, "gan", 4, 2)
    if not torch.cuda.is_available():
        with pytest.raises(DGHError, match="no CUDA GPU"):
            make_calibration_set(model, "dgh", 4, 2, device="cuda")


def test_default_budget() -> None:
    model = as_loaded(tiny_bn_net())
    assert default_budget(model, "cpu").describe() == default_budget(model, "cuda").describe()
    assert (default_budget(model, "cpu").n_images, default_budget(model, "cpu").iters) == (256, 500)
    det = replace(model, task="detect")
    assert (default_budget(det, "cpu").n_images, default_budget(det, "cpu").iters) == (64, 200)
    assert (default_budget(det, "cuda:0").n_images, default_budget(det, "cuda:0").iters) == (128, 500)


_MEMORY_SCRIPT = """
import json, sys, torch
from pathlib import Path
torch.set_num_threads(2)
from dgh_deploy.loading import load_model
from dgh_deploy.generation import DGHConfig, make_calibration_set
from dgh_deploy.generation.memory import peak_rss_mb
# fp32 whatever the CPU: bf16 activations are half the size, so the chunks the test counts would differ
config = DGHConfig(precision="fp32")
# Compiling the BN kernels costs a fixed few hundred MB: done first, then the peak is reset to
# what the process holds, so that both runs' peaks are the generation's.
make_calibration_set(load_model("demo"), "dgh", 2, 1, progress=False, config=config)
clear = Path("/proc/self/clear_refs")
if clear.exists():
    clear.write_text("5")
cs = make_calibration_set(load_model("demo"), "dgh", int(sys.argv[1]), 1, progress=False, config=config)
print(json.dumps({"rss_mb": peak_rss_mb(),
                  "chunks": cs.stats["chunks"], "shape": list(cs.images.shape)}))
"""


def _generation_peak(n_images: int) -> dict[str, Any]:
    """Peak RSS of generating ``n_images`` demo images in a fresh process (a clean high-water mark)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(n_images)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_is_set_by_the_chunk_not_the_image_count() -> None:
    """4096 images take 14 chunks of the 768 MB default budget, 600 take 2 of nearly the same size:
    their peaks differ by the set's own tensors (images, gradients, optimiser state: about 50 MB
    each), not by the 7x of saved activations a whole-set graph would hold. The absolute peak is
    the machine's: 1.5 to 1.8 GB here (2-core EPYC, AVX2), 2.2 GB once in CI on the same kind."""
    small, big = _generation_peak(600), _generation_peak(4096)
    assert big["shape"] == [4096, 3, 32, 32] and small["shape"] == [600, 3, 32, 32]
    assert (small["chunks"], big["chunks"]) == (2, 14)  # the chunked, exact path ran in both
    # Run-to-run noise of the same job is up to ~300 MB (the heap's fragmentation); a graph kept
    # for the whole set would add gigabytes.
    assert big["rss_mb"] - small["rss_mb"] < 500, (small, big)


def test_smoothing_is_the_gaussian_of_the_paper_in_either_memory_layout() -> None:
    """3x3, sigma 1.25, normalised; the channels-last path (the fast one on CPU) gives the very
    values of a plain per-channel convolution of NCHW images, forward and backward."""
    from dgh_deploy.generation.augment import ImagePipeline, gaussian_kernel

    k = gaussian_kernel(3, 1.25).double()
    assert k.sum().item() == pytest.approx(1.0)
    assert k[0, 0].item() / k[1, 1].item() == pytest.approx(np.exp(-2 / (2 * 1.25**2)))
    x = torch.rand(2, 3, 37, 41, requires_grad=True)
    ref = torch.cat([nn.functional.conv2d(x[:, c : c + 1], k.float()[None, None], padding=1) for c in range(3)], 1)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    rng = (np.zeros(3, np.float32), np.ones(3, np.float32))
    for channels_last in (False, True):
        got = ImagePipeline((32, 32), 4, rng, channels_last=channels_last).smooth(x)
        (g,) = torch.autograd.grad(got.square().sum(), x)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_training_view_is_smooth_then_crop_then_flip() -> None:
    """The one-gather crop and flip give, per image, the plain slice of the smoothed image
    (flipped where drawn), and its gradient is that slice's, scattered back."""
    from dgh_deploy.generation.augment import ImagePipeline

    rng = (np.full(3, -0.5, np.float32), np.full(3, 0.5, np.float32))
    pipe = ImagePipeline((8, 6), 4, rng, channels_last=True)
    x = torch.randn(5, 3, 12, 10, dtype=torch.float64, requires_grad=True)
    flip = torch.tensor([True, False, True, False, True])
    dy, dx = torch.tensor([0, 4, 2, 1, 3]), torch.tensor([4, 0, 1, 3, 2])
    got = pipe.train_view(x, flip, dy, dx)

    def plain_view() -> torch.Tensor:
        smooth = pipe.smooth(x)
        crops = [smooth[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 6] for i in range(5)]
        return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip.tolist(), strict=True)])

    ref = plain_view()
    assert torch.equal(got, ref.clamp(-0.5, 0.5))
    w = torch.randn_like(ref)
    (g,) = torch.autograd.grad((got * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)  # clipping passes the gradient straight through
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
@pytest.mark.parametrize("retain", [True, False])
def test_cuda_graph_run_matches_the_eager_run(retain: bool) -> None:
    """The replayed CUDA graph computes the eager step: after 12 iterations (draws changing every
    step, the optimiser updating the captured images in place) the images agree, both on the
    retained path and on the two-pass one over chunks."""
    model = as_loaded(tiny_bn_net().double())  # float64: lr 16 would amplify float32 rounding
    outs = {}
    for graphs in (False, True):
        cfg = DGHConfig(cuda_graphs=graphs, output_loss_multiplier=1e-2)
        gen = Generator(model, 16, 12, seed=5, device="cuda", config=cfg, dtype=torch.float64,
                        chunk=16 if retain else 4, retain=retain)
        res = gen.run(progress=False)
        assert res.stats["cuda_graph"] is graphs
        outs[graphs] = (res.images, res.stats["loss_curve"])
    eager, graphed = outs[False], outs[True]
    np.testing.assert_allclose(graphed[0], eager[0], rtol=0, atol=1e-7)
    assert [c["bn"] for c in graphed[1]] == pytest.approx([c["bn"] for c in eager[1]], rel=1e-6)
    assert eager[1][-1]["bn"] < eager[1][0]["bn"]  # it optimised


_ALLOCATOR_SCRIPT = """
import json, torch
from dgh_deploy.generation.memory import keep_freed_memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))

base = rss_mb()
with keep_freed_memory():
    x = torch.ones(64 * 2**20)  # 256 MB, touched
    del x
    kept = rss_mb() - base
after = rss_mb() - base
print(json.dumps({"kept": kept, "after": after}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator setting: Linux only")
def test_freed_memory_is_kept_for_the_run_and_returned_after() -> None:
    """Inside, a freed 256 MB tensor stays mapped (the next step reuses it without page
    faults); on exit the memory goes back to the OS."""
    out = subprocess.run([sys.executable, "-c", _ALLOCATOR_SCRIPT], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["kept"] > 200, res
    assert res["after"] < 50, res


def test_cache_key_is_the_generation_recipe_and_version() -> None:
    """The cache takes the recipe and version from its caller (calibration sits below generation):
    the key is the hash of the job's recipe as it runs (``job_recipe``: the precision resolved, as
    the pipeline passes it), so it names fp32 or bf16, never ``auto``."""
    import hashlib

    from dgh_deploy import __version__
    from dgh_deploy.calibration import cache
    from dgh_deploy.generation.config import job_recipe

    model = as_loaded(tiny_bn_net())
    for source in ("dgh", "bns", "noise"):
        recipe = job_recipe(source, None, "cpu").hashed_settings()
        assert recipe["precision"] in ("fp32", "bf16")
        settings = {"model": model.fingerprint(), "source": source, "n": 288, "iters": 500, "seed": 0,
                    "device": "cpu", "version": __version__}
        if source in cache.CACHED_SOURCES:
            settings["recipe"] = recipe
        before = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
        key = cache.cache_key(model, source, 288, 500, 0, "cpu", version=__version__, recipe=recipe)
        assert key == before
    with pytest.raises(ValueError, match="needs its recipe"):
        cache.cache_key(model, "dgh", 8, 10, 0, "cpu", version=__version__)
    assert cache.cache_key(model, "noise", 8, 10, 0, "cpu", version=__version__) == cache.cache_key(
        model, "noise", 8, 10, 0, "cpu", version=__version__, recipe={"lr": 1.0})  # not generated: no recipe
