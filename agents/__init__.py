"""Agents: model loading, policy backends, the ReAct loop, the rollout settings, the collector and the evaluator."""

from ._collector import (CollectConfig, Collector, Mount, Progress, collect, collect_async, gather_or_cancel,
                         play_episode, resolved_config, to_trajectory)
from ._embed import EmbeddingSimilarity, cosine_neighbours, embed_texts
from ._eval import AgentResult, EvalConfig, EvalResults, evaluate, evaluate_async, wilson_ci
from ._executor import Executor, executors
from ._loop import EpisodeResult, ReActLoop, listed_tools
from ._models import (ALIASES, ModelNotFoundError, adapter_base, bf16_is_fast, build_tiny_llama, is_peft_adapter,
                      load_causal_lm, resolve_model)
from ._policy import ActionFormat, Policy, PolicyError, make_policy, policies, split_spec
from ._readiness import (GateConfig, GateReport, expected_calibration_error, gate, ks_statistic, psi,
                         read_gate)
from ._rollout import INVOCATION_KEYS, RolloutConfig, config_field, rollout_default, stored_settings
from ._scoring import EpisodeScores, score_episodes

__all__ = [
    "ALIASES",
    "ActionFormat",
    "AgentResult",
    "CollectConfig",
    "Collector",
    "EmbeddingSimilarity",
    "EpisodeResult",
    "EpisodeScores",
    "EvalConfig",
    "EvalResults",
    "Executor",
    "GateConfig",
    "GateReport",
    "ModelNotFoundError",
    "Mount",
    "Policy",
    "PolicyError",
    "Progress",
    "ReActLoop",
    "INVOCATION_KEYS",
    "RolloutConfig",
    "adapter_base",
    "bf16_is_fast",
    "build_tiny_llama",
    "collect",
    "collect_async",
    "config_field",
    "cosine_neighbours",
    "embed_texts",
    "evaluate",
    "evaluate_async",
    "gather_or_cancel",
    "executors",
    "expected_calibration_error",
    "gate",
    "is_peft_adapter",
    "ks_statistic",
    "load_causal_lm",
    "listed_tools",
    "make_policy",
    "play_episode",
    "policies",
    "psi",
    "read_gate",
    "resolve_model",
    "resolved_config",
    "rollout_default",
    "stored_settings",
    "score_episodes",
    "split_spec",
    "to_trajectory",
    "wilson_ci",
]
