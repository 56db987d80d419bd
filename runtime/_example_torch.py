"""The PyTorch example module (see ``runtime.examples``), importable so that pickles can find it."""

from __future__ import annotations

import torch


class TinyClassifier(torch.nn.Module):
    """``x`` [N, 4] float32 -> class probabilities [N, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)
