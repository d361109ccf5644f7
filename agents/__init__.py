"""Agents: policy backends, the ReAct loop, the collector and the evaluator."""

from ._policy import ActionFormat, Policy, PolicyError, make_policy, policies, split_spec

__all__ = ["ActionFormat", "Policy", "PolicyError", "make_policy", "policies", "split_spec"]
