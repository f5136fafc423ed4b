from typing import Optional

__version__: str

class PlanError(ValueError): ...

def plan_path(
    path: str, mode: str, analysis: str, input_shape: Optional[list[int]], std_cap: Optional[float], branch_scale: float, batch: Optional[int]
) -> tuple[str, list[str]]: ...
def plan_bytes(
    data: bytes, kind: str, name: str, mode: str, analysis: str, input_shape: Optional[list[int]], std_cap: Optional[float], branch_scale: float, batch: Optional[int]
) -> tuple[str, list[str]]: ...
