"""Op planners for the OpenCL executor, one module per op family.

Importing this package fills :data:`REGISTRY` (op type -> planner).
"""

from __future__ import annotations

from . import conv, elementwise, matmul, norm, pooling, resize, shape, softmax
from .registry import REGISTRY, register

__all__ = ["REGISTRY", "conv", "elementwise", "matmul", "norm", "pooling", "register", "resize", "shape", "softmax"]
