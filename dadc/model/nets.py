"""The model zoo. Every net maps [N,1,28,28] images in [0,1] to [N,10] logits (or log-probabilities)."""
import torch.nn as nn
import torch.nn.functional as F


class Seed000(nn.Module):
    """The net of the DADC blog post (seed 000), exactly: the baseline, not robust."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def fast():
    """Wong et al.'s MNIST net (fast_adversarial), twice as wide: cheap strided convs, so PGD
    training and live prediction stay fast on 2 CPU cores, with enough width for eps=0.3."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 200), nn.ReLU(),
        nn.Linear(200, 10),
    )


def madry():
    """Madry et al.'s MNIST challenge net (3.3M parameters): the reference robust setup, for GPU."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 1024), nn.ReLU(),
        nn.Linear(1024, 10),
    )


def smallcnn():
    """TRADES' SmallCNN (Zhang et al. 2019, models/small_cnn.py): 312k parameters, for GPU."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, 10),
    )


NETS = {"seed000": Seed000, "fast": fast, "madry": madry, "smallcnn": smallcnn}


def build(name: str) -> nn.Module:
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; choose one of: {', '.join(NETS)}")
    return NETS[name]()
