"""Frozen patch encoders: a small pre-trained CNN for CPU profiles and a ResNet-50 laid out like torchvision's.

Both map normalised ``(N, 3, S, S)`` crops to globally average-pooled features, the ResNet ``AvgPool``
features of Kaleido-BERT and FashionBERT (the small CNN's are standardised per dimension as well).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from kbench.core.errors import KbenchError
from kbench.core.registry import Registry

SMALL_CNN_WEIGHTS = "weights/small-cnn.safetensors"
RANDOM_WEIGHTS = "random"  # features.weights=random: random weights, to try a profile's code path only
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEncoder(nn.Module):
    """Base of the frozen encoders: ``out_dim`` features per crop."""

    out_dim: int
    requires_weights = False  # True: meaningless without a weights file (random weights serve timing only)

    @classmethod
    def untrained(cls) -> PatchEncoder:
        """The encoder with random weights (``features.weights=random``)."""
        return cls()

    def weights_id(self) -> str:
        """What identifies the weights in cache keys."""
        raise NotImplementedError

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` spatial features before pooling: the grid a soft-attention captioner attends over."""
        raise NotImplementedError


ENCODERS: Registry[type[PatchEncoder]] = Registry("encoder", base=PatchEncoder)


@ENCODERS.register("small-cnn")
class SmallCNN(PatchEncoder):
    """Three conv-BN-ReLU stages pre-trained on garment crops (``encoder_pretraining``); 128-d, CPU-cheap."""

    def __init__(self, weights: str | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_stage(3, 32, stride=2), *_stage(32, 64, stride=2), *_stage(64, 128, stride=1), nn.AdaptiveAvgPool2d(1)
        )
        # Standardises each output dimension with its statistics over the pre-training crops.
        self.norm = nn.BatchNorm1d(128, affine=False)
        self.out_dim = 128
        self.weights_digest = "untrained"
        if pretrained:
            path = Path(weights) if weights else Path(str(resources.files("kbench").joinpath(SMALL_CNN_WEIGHTS)))
            if not path.is_file():
                raise KbenchError(f"small-cnn weights file {path} does not exist")
            self.load_state_dict(load_file(str(path)))
            self.weights_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    @classmethod
    def untrained(cls) -> SmallCNN:
        return cls(pretrained=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.flatten(self.features(x), 1))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[:-1](x)  # stride 4: a 56 x 56 crop gives a 14 x 14 grid

    def weights_id(self) -> str:
        return self.weights_digest


def _stage(inputs: int, outputs: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(True),
    ]


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck block (same parameter names)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@ENCODERS.register("resnet50")
class ResNet50(PatchEncoder):
    """ResNet-50 with torchvision's parameter names; loads the ImageNet weights file the user gives (2048-d)."""

    requires_weights = True

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = 64
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 1000)
        self.out_dim = 2048
        self.weights_digest = "random"
        if weights:
            self._load(Path(weights))

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise KbenchError(f"resnet50 weights file {path} does not exist")
        self.weights_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises several types for a file that is not a state dict
                raise KbenchError(f"cannot read resnet50 weights {path}: {exc}") from None
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:  # missing, unexpected or mis-shaped parameters
            detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise KbenchError(f"{path} is not a torchvision resnet50 state dict: {detail}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # stride 32: 224 x 224 gives 7 x 7

    def weights_id(self) -> str:
        return self.weights_digest


def build_encoder(name: str, weights: str | None) -> PatchEncoder:
    """The frozen encoder ``name`` in eval mode, without gradients."""
    encoder_cls = ENCODERS.get(name)
    if weights == RANDOM_WEIGHTS:
        encoder = encoder_cls.untrained()
    elif encoder_cls.requires_weights and not weights:
        raise KbenchError(
            f"the {name} encoder needs features.weights: a torchvision {name} state dict file "
            f"(features.weights={RANDOM_WEIGHTS} tries the code path with random weights)"
        )
    else:
        encoder = encoder_cls(weights=weights)
    encoder.eval().requires_grad_(False)
    return encoder
