"""Train the project's own CIFAR-10 models on the JPEG training set.

Recipes (what produced the bundled weights):

- ``models/demo/cifar10_resnet20_demo.pt`` (``--arch cifar_resnet20``, the defaults):
  SGD, Nesterov momentum 0.9, batch 256, peak lr 0.2 with 2 warm-up epochs then cosine
  to 0, weight decay 5e-4 (not on BN or bias), 60 epochs, bf16 autocast on a GPU.
- ``models/demo/cifar10_mobilenetv2_w05.pt`` (``--arch cifar_mobilenetv2 --epochs 10
  --batch 128 --lr 0.1 --warmup 1 --threads 1 --half``): the same optimiser, no weight
  decay on the depthwise filters either, trained on one core of a 2-core CPU.

Both use random crop (pad 4) and horizontal flip. Inputs are RGB in [0, 1] normalised
with the ImageNet mean/std, like the pretrained CIFAR ResNets, so all CIFAR models share
one preprocessing. An interrupted run resumes from ``OUT.partial`` (saved every epoch).

Data: an ImageFolder of JPEGs (``--data ../shared/assets/cifar10/train``) or the same
images packed by ``--pack`` into one ``.npz`` of raw JPEG bytes (to carry them to a
GPU machine in one file). The script needs only torch, numpy and Pillow.

    python models/train_cifar.py --data ../shared/assets/cifar10/train --pack /tmp/train.npz
    python models/train_cifar.py --data /tmp/train.npz --out models/demo/cifar10_resnet20_demo.pt
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:
    from dgh_deploy.models.cifar_mobilenetv2 import cifar_mobilenetv2
    from dgh_deploy.models.cifar_resnet import cifar_resnet20
except ImportError:  # run as a plain script on a machine without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cifar_mobilenetv2 import cifar_mobilenetv2  # type: ignore[no-redef]
    from cifar_resnet import cifar_resnet20  # type: ignore[no-redef]

ARCHS = {"cifar_resnet20": cifar_resnet20, "cifar_mobilenetv2": cifar_mobilenetv2}

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def list_folder(root: Path) -> tuple[list[Path], np.ndarray]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for idx, name in enumerate(classes):
        for f in sorted((root / name).glob("*.jpg")):
            files.append(f)
            labels.append(idx)
    return files, np.asarray(labels, dtype=np.int64)


def pack(root: Path, out: Path) -> None:
    files, labels = list_folder(root)
    blobs = [f.read_bytes() for f in files]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez(out, data=np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets=offsets, labels=labels)
    print(f"packed {len(files)} images, {offsets[-1] / 1e6:.1f} MB -> {out}")


def load_uint8(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode to an N x 32 x 32 x 3 uint8 array and labels."""
    if path.suffix == ".npz":
        z = np.load(path)
        data, offsets, labels = z["data"], z["offsets"], z["labels"]
        blobs = [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(labels))]
    else:
        files, labels = list_folder(path)
        blobs = [f.read_bytes() for f in files]
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    return images, labels


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip, on the whole batch at once."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 9, (n,), generator=gen).to(x.device)
    base = torch.arange(32, device=x.device)
    rows = (dy[:, None] + base)[:, None, :, None].expand(n, 3, 32, 40)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + base)[:, None, None, :].expand(n, 3, 32, 32)
    out = out.gather(3, cols)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: str) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), 1000):
        x = normalise(torch.from_numpy(images[i : i + 1000]).to(device))
        correct += (model(x).argmax(1).cpu().numpy() == labels[i : i + 1000]).sum()
    return float(correct) / len(labels)


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """Weight decay on full convolutions and the classifier only.

    BN parameters, biases and depthwise filters (9 weights each) are left alone: decay
    shrinks a depthwise filter's few weights towards zero and costs MobileNets accuracy.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            depthwise = isinstance(module, torch.nn.Conv2d) and module.groups > 1
            (decay if param.ndim > 1 and not depthwise else no_decay).append(param)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    images, labels = load_uint8(Path(args.data))
    print(f"decoded {len(labels)} images in {time.time() - t0:.1f}s on {device}", flush=True)
    x_all = normalise(torch.from_numpy(images).to(device))
    y_all = torch.from_numpy(labels).to(device)
    model = ARCHS[args.arch]().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, args.wd), lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(labels) // args.batch
    total = steps_per_epoch * args.epochs
    warm = steps_per_epoch * args.warmup

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    first_epoch = resume(partial, model, opt, gen)
    step = first_epoch * steps_per_epoch
    for epoch in range(first_epoch, args.epochs):
        model.train()
        perm = torch.randperm(len(labels), generator=gen).to(device)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch : (i + 1) * args.batch]
            x = augment(x_all[idx], gen).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            step += 1
        save_atomic(partial, {"model": model.state_dict(), "opt": opt.state_dict(),
                              "gen": gen.get_state(), "epoch": epoch + 1})
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps_per_epoch:.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    model = model.float().to("cpu").to(memory_format=torch.contiguous_format)
    dtype = torch.float16 if args.half else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_atomic(out, {"state_dict": state, "arch": args.arch, "recipe": vars(args)})
    partial.unlink(missing_ok=True)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f}s")
    if args.test:
        test_images, test_labels = load_uint8(Path(args.test))
        print(f"top-1 on {len(test_labels)} test images: {evaluate(model, test_images, test_labels, 'cpu'):.4f}")


def resume(partial: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    """Load the last finished epoch's state, if an earlier run left one; the epoch to start at."""
    if not partial.exists():
        return 0
    state = torch.load(partial, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    print(f"resuming after epoch {state['epoch']} from {partial}", flush=True)
    return int(state["epoch"])


def save_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder of CIFAR-10 JPEGs, or a packed .npz")
    p.add_argument("--pack", help="only pack --data into this .npz and exit")
    p.add_argument("--arch", choices=sorted(ARCHS), default="cifar_resnet20")
    p.add_argument("--out", default="models/demo/cifar10_resnet20_demo.pt")
    p.add_argument("--test", help="ImageFolder or .npz of test images: print top-1 after training")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=2, help="warm-up epochs")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--half", action="store_true", help="save the weights in float16")
    args = p.parse_args()
    if args.pack:
        pack(Path(args.data), Path(args.pack))
    else:
        train(args)


if __name__ == "__main__":
    main()
