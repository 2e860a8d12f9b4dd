"""Small generated stand-ins for MNIST, so unit tests never need the real data or the network."""
import torch
import torch.nn.functional as F


def digits(n, seed=0, noise=0.15):
    """n images [n,1,28,28] in [0,1] of 10 classes: each class a fixed smooth random template."""
    g = torch.Generator().manual_seed(1234)  # the templates are the same for every call
    templates = F.interpolate(torch.rand(10, 1, 7, 7, generator=g), size=28, mode="bilinear")
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = (templates[y] + noise * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
    return x, y


def tiny_net():
    """Small enough to train in a second on a CPU; has batch norm and dropout on purpose."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 4, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 4, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Dropout(0.1), torch.nn.Linear(16 * 7 * 7, 10),
    )
