"""The body of the ``resnet`` family: a ResNet for images, pooled to one feature vector.

He et al. 2016 ("Deep Residual Learning for Image Recognition"), the basic block with BatchNorm and an
identity shortcut (a strided 1x1 conv + BN where the shape changes, the paper's option B). Sized by
``width`` (channels of the first stage) and ``stages`` (one basic block each; stage ``i`` has
``width * 2**i`` channels):

    stem    3x3 conv (stride 2 when the image is at least 32 pixels on its short side) + BN + ReLU
    stage i basic block: [3x3 conv (stride s) + BN + ReLU, 3x3 conv + BN] + shortcut, ReLU;
            s = 2 for i >= 1 while the map is at least 4 pixels on its short side, else 1
    pool    global average over the map, so the features do not depend on the input size

On 64x64 inputs, ``width=32, stages=4`` runs on 32x32, 16x16, 8x8 and 4x4 maps of 32, 64, 128 and 256
channels: ~1.2 M parameters, ~45 M multiply-accumulates per image.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "resnet_body"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut projects when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet_body(input_shape: tuple[int, ...], width: int, stages: int) -> tuple[nn.Sequential, int]:
    """The stem, the stages and global average pooling for (C, H, W) inputs; returns (body, feature size).

    The body maps (N, C, H, W) to (N, width * 2**(stages - 1)) non-negative features (pooled ReLU outputs).
    Convolutions use He initialisation (fan-out, as torchvision's ResNet); BatchNorm starts at scale 1, shift 0.
    """
    channels, *spatial = input_shape
    stem_stride = 2 if min(spatial) >= 32 else 1
    layers: list[nn.Module] = [
        nn.Conv2d(channels, width, 3, stride=stem_stride, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    side = -(-min(spatial) // stem_stride)
    c_in = width
    for i in range(stages):
        c_out = width * 2**i
        stride = 2 if i > 0 and side >= 4 else 1
        layers.append(BasicBlock(c_in, c_out, stride))
        side = -(-side // stride)
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    body = nn.Sequential(*layers)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return body, c_in
