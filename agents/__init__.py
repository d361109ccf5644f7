"""Agents: policy backends, the ReAct loop, the collector and the evaluator."""

from ._eval import EvalConfig, evaluate, evaluate_async
from ._policy import ActionFormat, Policy, PolicyError, make_policy, policies, split_spec
from ._self_distill import RoundStats, SelfDistillConfig, self_distill, self_distill_async

__all__ = ["ActionFormat", "EvalConfig", "Policy", "PolicyError", "RoundStats", "SelfDistillConfig", "evaluate",
           "evaluate_async", "make_policy", "policies", "self_distill", "self_distill_async", "split_spec"]
