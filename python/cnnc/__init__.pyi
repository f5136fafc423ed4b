import os
from typing import Any, Literal, Optional, Sequence, Union

from . import torch as torch


__version__: str
MODES: tuple[str, ...]
ANALYSES: tuple[str, ...]

Mode = Literal["forward", "backward", "xavier", "kaiming-in", "kaiming-out"]
Analysis = Literal["paper", "map"]

class PlanError(ValueError):
    """The compiler refused the model or the options; the message is cnnc's."""

class PlanNote(UserWarning): ...

def plan(
    source: Union[str, os.PathLike[str], bytes, bytearray, memoryview],
    mode: Mode = "forward",
    analysis: Analysis = "paper",
    input_shape: Optional[Sequence[int]] = None,
    std_cap: Optional[float] = None,
    branch_scale: float = 1.0,
    *,
    batch: Optional[int] = None,
    kind: Optional[Literal["onnx", "cnn"]] = None,
    name: Optional[str] = None,
) -> dict[str, Any]: ...
