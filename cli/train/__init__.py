"""Training: span-aware curriculum SFT (with optional white-box KD) and self-distillation."""

from ._curriculum import Complexity
from ._curriculum import Plan as CurriculumPlan
from ._curriculum import order as curriculum_order
from ._encode import SPAN_KINDS, Encoded, encode
from ._self_distill import RoundStats, SelfDistillConfig, self_distill, self_distill_async
from ._sft import TrainConfig, TrainResult, train

__all__ = [
    "SPAN_KINDS",
    "Complexity",
    "CurriculumPlan",
    "Encoded",
    "RoundStats",
    "SelfDistillConfig",
    "TrainConfig",
    "TrainResult",
    "curriculum_order",
    "encode",
    "self_distill",
    "self_distill_async",
    "train",
]
