"""A user's own two-input, two-output network with a non-square input, given to edge only as
`fusion.py:make` plus `example_inputs()`: a 48x64 RGB camera frame and a 6-value sensor reading
in; a 5-class score vector and a 2-channel 12x16 heat map out."""
import torch
import torch.nn as nn


class Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.sensor = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classes = nn.Linear(16, 5)
        self.heat = nn.Conv2d(16, 2, 1)

    def forward(self, frame, reading):
        f = self.features(frame)
        s = self.sensor(reading)
        scores = self.classes(torch.flatten(self.pool(f), 1) + s)
        heat = self.heat(f * torch.sigmoid(s)[:, :, None, None])
        return scores, heat


def make():
    return Fusion()


def example_inputs():
    torch.manual_seed(0)
    return torch.rand(1, 3, 48, 64), torch.randn(1, 6)
