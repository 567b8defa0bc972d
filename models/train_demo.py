"""Train the bundled demo model: a CIFAR-10 ResNet-20 on the JPEG training set.

Recipe (what produced ``models/demo/cifar10_resnet20_demo.pt``):
SGD, Nesterov momentum 0.9, batch 256, peak lr 0.2 with 2 warm-up epochs then cosine
to 0, weight decay 5e-4 (not on BN or bias), 60 epochs, random crop (pad 4) and
horizontal flip, bf16 autocast on a GPU. Inputs are RGB in [0, 1] normalised with
the ImageNet mean/std, like the pretrained CIFAR ResNets, so the demo shares their
preprocessing.

Data: an ImageFolder of JPEGs (``--data ../shared/assets/cifar10/train``) or the same
images packed by ``--pack`` into one ``.npz`` of raw JPEG bytes (to carry them to a
GPU machine in one file). The script needs only torch, numpy and Pillow.

    python models/train_demo.py --data ../shared/assets/cifar10/train --pack /tmp/train.npz
    python models/train_demo.py --data /tmp/train.npz --out models/demo/cifar10_resnet20_demo.pt
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
    from dgh_deploy.models.cifar_resnet import cifar_resnet20
except ImportError:  # run as a plain script on a machine without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cifar_resnet import cifar_resnet20  # type: ignore[no-redef]

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


def train(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    images, labels = load_uint8(Path(args.data))
    print(f"decoded {len(labels)} images in {time.time() - t0:.1f}s on {device}", flush=True)
    x_all = normalise(torch.from_numpy(images).to(device))
    y_all = torch.from_numpy(labels).to(device)
    model = cifar_resnet20().to(device).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, momentum=0.9, nesterov=True,
    )
    steps_per_epoch = len(labels) // args.batch
    total = steps_per_epoch * args.epochs
    warm = steps_per_epoch * 2

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    step = 0
    for epoch in range(args.epochs):
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
            loss_sum += float(loss)
            step += 1
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps_per_epoch:.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    model = model.float().to("cpu").to(memory_format=torch.contiguous_format)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"state_dict": state, "arch": "cifar_resnet20", "recipe": vars(args)}, tmp)
    os.replace(tmp, out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder of CIFAR-10 JPEGs, or a packed .npz")
    p.add_argument("--pack", help="only pack --data into this .npz and exit")
    p.add_argument("--out", default="models/demo/cifar10_resnet20_demo.pt")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.pack:
        pack(Path(args.data), Path(args.pack))
    else:
        train(args)


if __name__ == "__main__":
    main()
