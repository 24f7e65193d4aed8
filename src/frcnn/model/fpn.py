"""Feature pyramid: C2..C5 -> P2..P6, all with the same number of channels."""

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """Lateral 1x1 convs, a nearest-neighbour top-down path and 3x3 output convs.

    P6 is P5 subsampled with stride 2 (a 1x1 max-pool), used by the RPN only.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.out_channels = out_channels
        self.num_levels = len(in_channels) + 1  # and P6
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """[C2..C5] (finest first) -> [P2, P3, P4, P5, P6], (B, out_channels, H_l, W_l)."""
        top_down = self.lateral[-1](features[-1])
        pyramid = [self.output[-1](top_down)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral[level](features[level])
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            pyramid.insert(0, self.output[level](top_down))
        pyramid.append(F.max_pool2d(pyramid[-1], kernel_size=1, stride=2))
        return pyramid
