"""Residual building blocks of the compression module (RDEIC method file, section 2).

All convolutions are 3×3, stride 1, padding 1 unless said. The activation comes before the sum with
the shortcut, as in the authors' code.
"""

from __future__ import annotations

from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride)


class ResidualBlock(nn.Module):
    """RB(in, out): conv3×3 → LeakyReLU(0.01) → conv3×3 → LeakyReLU(0.01), plus a shortcut
    (identity, or a 1×1 conv when the channel counts differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv3x3(cin, cout)
        self.conv2 = conv3x3(cout, cout)
        self.act = nn.LeakyReLU(0.01)
        self.adaptor = conv1x1(cin, cout) if cin != cout else None

    def forward(self, x):
        identity = x if self.adaptor is None else self.adaptor(x)
        out = self.act(self.conv1(x))
        out = self.act(self.conv2(out))
        return out + identity


class ResidualBlockDown(nn.Module):
    """RBS(in, out): conv3×3 stride 2 → LeakyReLU(0.01) → conv3×3 → LeakyReLU(0.1), shortcut 1×1 stride 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride=2)
        self.conv2 = conv3x3(cout, cout)
        self.act1 = nn.LeakyReLU(0.01)
        self.act2 = nn.LeakyReLU(0.1)
        self.downsample = conv1x1(cin, cout, stride=2)

    def forward(self, x):
        out = self.act2(self.conv2(self.act1(self.conv1(x))))
        return out + self.downsample(x)


class ResidualBlockUp(nn.Module):
    """RBU(in, out), ×2 up: 1×1 conv to 4·out + PixelShuffle(2) → LeakyReLU(0.01) → conv3×3 →
    LeakyReLU(0.1); shortcut: a second 1×1 conv to 4·out + PixelShuffle(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.subpel_conv = nn.Sequential(conv1x1(cin, 4 * cout), nn.PixelShuffle(2))
        self.conv = conv3x3(cout, cout)
        self.act1 = nn.LeakyReLU(0.01)
        self.act2 = nn.LeakyReLU(0.1)
        self.upsample = nn.Sequential(conv1x1(cin, 4 * cout), nn.PixelShuffle(2))

    def forward(self, x):
        out = self.act2(self.conv(self.act1(self.subpel_conv(x))))
        return out + self.upsample(x)


class PlainResidualBlock(nn.Module):
    """x + conv3×3(LeakyReLU(0.1)(conv3×3(x))): no activation on the branch's output, so a block can add
    negative values as well as positive ones (issue 21's probe design; the blocks above end in a
    LeakyReLU(0.01), which lets a block add almost only positive values)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


def plain_upsample(cin: int, cout: int) -> nn.Sequential:
    """×2 up: conv3×3 to 4·cout, then PixelShuffle(2)."""
    return nn.Sequential(conv3x3(cin, 4 * cout), nn.PixelShuffle(2))
