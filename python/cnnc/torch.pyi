from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from . import Analysis, Mode

OPSET: int

def export_onnx(module: nn.Module, example_inputs: Sequence[torch.Tensor]) -> bytes: ...
def init_(
    module: nn.Module,
    input_shape: Optional[Sequence[int]] = None,
    *,
    example_inputs: Union[torch.Tensor, Sequence[torch.Tensor], None] = None,
    mode: Mode = "forward",
    analysis: Analysis = "paper",
    branch_scale: float = 1.0,
    std_cap: Optional[float] = None,
    batch: Optional[int] = None,
    seed: Optional[int] = None,
) -> InitReport: ...
def apply(
    module: nn.Module, plan: dict[str, Any], seed: Optional[int] = None, generator: Optional[torch.Generator] = None
) -> InitReport: ...
def check(
    module: nn.Module,
    input_shape: Optional[Sequence[int]] = None,
    draws: int = 8,
    batch: int = 8,
    *,
    plan: Optional[dict[str, Any]] = None,
    seed: int = 0,
) -> CheckReport: ...

class InitReport:
    name: str
    plan: dict[str, Any]
    layers: list[dict[str, Any]]
    batch_norms: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    gains: list[dict[str, Any]]
    seconds: dict[str, float]
    def to_pandas(self) -> Any: ...

class CheckReport:
    name: str
    plan: dict[str, Any]
    layers: list[dict[str, Any]]
    draws: int
    batch: int
    input_shape: tuple[int, ...]
    seconds: float
    def to_pandas(self) -> Any: ...
    def plot(self, path: str) -> str: ...
