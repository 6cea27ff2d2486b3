"""Pre-training of the small CNN: the offline stand-in for the ImageNet pre-training of ResNet-50.

No pre-trained CNN can be had offline, and random convolutions give features too weak to learn
cross-modal matching from in a CPU budget. So the small CNN learns, once, to name the sub-category, colour
and pattern of garment crops cut at the scales of the patch schemes, from a dedicated SynthFashion draw
(its own seed: none of the benchmark's train or test products). The weights ship with kbench as
``kbench/weights/small-cnn.safetensors``; ``python -m kbench.features.encoder_pretraining`` rebuilds them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from kbench.core.config import SynthConfig
from kbench.core.progress import stage
from kbench.data.synth import CATALOGUE, PATTERNS, plan_split
from kbench.data.synth_render import PALETTE, garment_box, render
from kbench.features.encoders import IMAGENET_MEAN, IMAGENET_STD, SmallCNN
from kbench.features.patches import KALEIDO, get_scheme

ENCODER_SEED = 7919  # the SynthFashion draw the CNN learns from; benchmark datasets use other seeds
MIN_GARMENT_SHARE = 0.3  # a training crop shows at least this much garment


def training_images(products: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Front views of ``products`` planned products: images, garment boxes and (sub-category, colour, pattern)."""
    plan = plan_split(SynthConfig(products_train=products, products_test=1, max_poses=1, seed=seed), "train")
    subs = [s.name for s in CATALOGUE]
    colours, patterns = list(PALETTE), list(PATTERNS)
    images = np.stack([render(p.look, p.views[0]) for p in plan])
    boxes = np.array([garment_box(p.look, p.views[0]) for p in plan])
    labels = np.array(
        [(subs.index(p.sub.name), colours.index(p.look.colour), patterns.index(p.look.pattern)) for p in plan]
    )
    return images, boxes, labels


def crop_boxes(garment: np.ndarray, size: int) -> np.ndarray:
    """Candidate crops: the kaleido and 8x8 cells of the whole image and of the garment box."""
    whole = (0, 0, size, size)
    locked = tuple(int(v) for v in garment)
    cells = [s.boxes(b) for s in (KALEIDO, get_scheme("grid-8")) for b in (whole, locked)]
    return np.concatenate(cells)


def garment_share(cells: np.ndarray, garment: np.ndarray) -> np.ndarray:
    """The share of each cell's area inside the garment box."""
    w = np.clip(np.minimum(cells[:, 2], garment[2]) - np.maximum(cells[:, 0], garment[0]), 0, None)
    h = np.clip(np.minimum(cells[:, 3], garment[3]) - np.maximum(cells[:, 1], garment[1]), 0, None)
    area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    return w * h / np.maximum(area, 1)


def pretrain_small_cnn(
    products: int = 1500, steps: int = 3000, batch_size: int = 128, crop_size: int = 32, seed: int = ENCODER_SEED
) -> SmallCNN:
    """Train a fresh small CNN on labelled garment crops; return it in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, garments, labels = training_images(products, seed)
    size = images.shape[1]
    crops = [crop_boxes(g, size) for g in garments]
    usable = [c[garment_share(c, g) >= MIN_GARMENT_SHARE] for c, g in zip(crops, garments, strict=True)]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    encoder = SmallCNN(pretrained=False)
    heads = nn.ModuleList(nn.Linear(encoder.out_dim, n) for n in (len(CATALOGUE), len(PALETTE), len(PATTERNS)))
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    encoder.train()
    with stage("pre-train small-cnn", steps) as advance:
        for _ in range(steps):
            which = rng.integers(len(images), size=batch_size)
            batch = []
            for i in which:
                x1, y1, x2, y2 = usable[i][rng.integers(len(usable[i]))]
                crop = pixels[i : i + 1, :, y1:y2, x1:x2].float() / 255
                batch.append(F.interpolate(crop, size=(crop_size, crop_size), mode="bilinear", antialias=True))
            features = encoder((torch.cat(batch) - mean) / std)
            target = torch.from_numpy(labels[which])
            loss = sum(F.cross_entropy(head(features), target[:, k]) for k, head in enumerate(heads))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            advance(1)
    return encoder.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "weights" / "small-cnn.safetensors")
    parser.add_argument("--products", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=3000)
    opts = parser.parse_args(argv)
    encoder = pretrain_small_cnn(opts.products, opts.steps)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(opts.out))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
