"""Training: span-aware curriculum SFT (with optional white-box KD), self-distillation and on-policy distillation."""

from ._config import TrainConfig
from ._curriculum import Complexity
from ._curriculum import Plan as CurriculumPlan
from ._curriculum import order as curriculum_order
from ._data import (TEACHER_LOGPROBS_FILE, SpanCollator, TrainData, build_data, pack, read_teacher_logprobs,
                    write_teacher_logprobs)
from ._divergence import TOKEN_KL_FILE, kl_by_turn, read_token_kl, token_kl, write_token_kl
from ._encode import SPAN_KINDS, Encoded, encode
from ._losses import final_losses, plot_losses
from ._onpolicy import (MixedPolicy, OnPolicyConfig, OnPolicyResult, OnPolicyRound, TurnRecord, beta_at, onpolicy,
                        onpolicy_async)
from ._rounds import parse_train_args
from ._self_distill import RoundStats, SelfDistillConfig, SelfDistillResult, self_distill, self_distill_async
from ._sft import TrainResult, train
from ._trainer import build_trainer, stage_steps, trainer_class

__all__ = [
    "SPAN_KINDS",
    "TEACHER_LOGPROBS_FILE",
    "TOKEN_KL_FILE",
    "Complexity",
    "CurriculumPlan",
    "Encoded",
    "MixedPolicy",
    "OnPolicyConfig",
    "OnPolicyResult",
    "OnPolicyRound",
    "RoundStats",
    "SelfDistillConfig",
    "SelfDistillResult",
    "SpanCollator",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TurnRecord",
    "beta_at",
    "build_data",
    "build_trainer",
    "curriculum_order",
    "encode",
    "final_losses",
    "kl_by_turn",
    "onpolicy",
    "onpolicy_async",
    "pack",
    "parse_train_args",
    "plot_losses",
    "read_teacher_logprobs",
    "read_token_kl",
    "self_distill",
    "self_distill_async",
    "stage_steps",
    "token_kl",
    "train",
    "trainer_class",
    "write_teacher_logprobs",
    "write_token_kl",
]
