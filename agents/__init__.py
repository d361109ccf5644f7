"""Agents: model loading, policy backends, the ReAct loop, the collector and the evaluator."""

from ._eval import EvalConfig, evaluate, evaluate_async
from ._policy import ActionFormat, Policy, PolicyError, make_policy, policies, split_spec

__all__ = ["ActionFormat", "EvalConfig", "Policy", "PolicyError", "evaluate",
           "evaluate_async", "make_policy", "policies", "split_spec"]
