"""Built-in model registry and loading of user models (``package.module:callable``) and checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from autoprune.errors import ModelError

__all__ = [
    "BUILTIN",
    "MLP",
    "BasicBlock",
    "Builder",
    "DigitsCNN",
    "LeNet5",
    "RecurrentClassifier",
    "ResNetCifar",
    "SmallVGG",
    "build_model",
    "load_checkpoint",
]


class MLP(nn.Module):
    """Fully connected net: flatten → hidden layers with ReLU → logits."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """Small conv net for 8×8 digits: conv 1→32→64 (3×3, each max-pooled), fc 256→128→classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8×8 → 4×4
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4×4 → 2×2
            nn.AdaptiveAvgPool2d(2),  # any larger input → 2×2 : 2w·4 = 256 features for w=32
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 4, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 adapted to small inputs (padding keeps 8×8 digits valid; any size ≥ 8 works)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; the shortcut couples ``conv2``'s output channels to the block input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for small images (He et al. 2016, CIFAR variant); ``width`` scales every stage."""

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"resnet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages: list[nn.Module] = []
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class SmallVGG(nn.Module):
    """VGG-11-BN layout with configurable width, for small images (pools stop at 1×1)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        cfg: list[int | str] = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8]
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                cout = int(v) * width
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, 4 * width), nn.ReLU(),
                                        nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class RecurrentClassifier(nn.Module):
    """A sequence classifier: an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` over the input's rows (an input (C, T, F) or
    (T, F) is read as T steps of C·F features, e.g. an 8×8 digit as 8 rows of 8 pixels), its last step's hidden state
    → a Linear head. ``cell``: lstm, gru or rnn."""

    CELLS: ClassVar[dict[str, type[nn.Module]]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

    def __init__(self, features: int, num_classes: int, hidden: int = 64, num_layers: int = 1, cell: str = "lstm",
                 bidirectional: bool = False) -> None:
        super().__init__()
        if cell not in self.CELLS:
            raise ModelError(f"model recurrent: cell '{cell}' (choose {', '.join(self.CELLS)})")
        self.rnn = self.CELLS[cell](features, hidden, num_layers=num_layers, batch_first=True,
                                    bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T, F) or (B, T, F) -> (B, T, C·F)
        seq = x.movedim(-2, 1).flatten(2) if x.dim() == 4 else x
        out, _ = self.rnn(seq)  # (B, T, hidden·directions)
        return self.head(out[:, -1])


def _recurrent_features(shape: tuple[int, ...]) -> int:
    return _flat(shape) // shape[-2] if len(shape) >= 2 else 1


def _flat(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


Builder = Callable[[tuple[int, ...], int, dict[str, Any]], nn.Module]
BUILTIN: dict[str, Builder] = {
    "mlp": lambda shape, k, kw: MLP(_flat(shape), k, **kw),
    "digits_cnn": lambda shape, k, kw: DigitsCNN(shape[0], k, **kw),
    "lenet5": lambda shape, k, kw: LeNet5(shape[0], k, **kw),
    "resnet20": lambda shape, k, kw: ResNetCifar(20, shape[0], k, **kw),
    "resnet56": lambda shape, k, kw: ResNetCifar(56, shape[0], k, **kw),
    "vgg11_bn": lambda shape, k, kw: SmallVGG(shape[0], k, **kw),
    "recurrent": lambda shape, k, kw: RecurrentClassifier(_recurrent_features(shape), k, **kw),
    "tiny_lm": lambda shape, k, kw: _tiny_lm(shape[0], k, kw),  # tokens (B, T) → logits: see autoprune.models.lm
}


def _tiny_lm(seq_len: int, vocab: int, kw: dict[str, Any]) -> nn.Module:
    from autoprune.models.lm import TinyLM

    return TinyLM(vocab=vocab, seq_len=seq_len, **kw)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                kwargs: dict[str, Any] | None = None, checkpoint: str | None = None,
                cache_dir: Path | None = None, adapter: str | None = None) -> nn.Module:
    """Build a model by name through its adapter (a built-in name, ``hf:``, ``torchvision:``, ``module:callable``,
    or ``adapter``: a user's :class:`~autoprune.models.adapters.ModelAdapter`); optionally load a state_dict.
    ``cache_dir``: where a pretrained language model's de-quantized weights are cached (see models.hf)."""
    from autoprune.models.adapters import adapter_for

    model = adapter_for(name, adapter).build(name, tuple(input_shape), num_classes, dict(kwargs or {}), cache_dir)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model '{name}': the callable returned {type(model).__name__}, not a torch nn.Module")
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict safely (``weights_only=True``); a mismatch names the offending keys."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"checkpoint {p}: file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"checkpoint {p}: cannot be read as a weights-only state_dict ({err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or shape:
        parts = [f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("shape mismatch", shape))
                 if keys]
        raise ModelError(f"checkpoint {p} does not match the model ({'; '.join(parts)})")
    model.load_state_dict(state)
