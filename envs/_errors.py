"""The library's error hierarchy. Only these errors are the user's to fix, so only these become
one-line exits in the CLI and errored episodes in a run; any other exception is a bug and keeps
its traceback.

    TrajdistillError
    ├── ConfigError        bad options, settings or input files (UnknownNameError, the CLI's UsageError)
    ├── RunError           a run directory is missing, corrupt or does not match (trajectories)
    ├── SandboxError       a sandbox backend cannot run (envs.sandbox)
    ├── PolicyError        a policy cannot produce a turn: endpoint down, model missing (agents)
    ├── BoxError           a skill box is malformed or untrusted (skills)
    ├── CannotActError     a scripted expert cannot act from the episode's state (on-policy relabelling records it)
    └── ToolError          a tool failed; the message goes back to the agent as an observation

The subclasses that used to be ValueErrors still are, so old `except ValueError` code keeps working.
"""

from __future__ import annotations


class TrajdistillError(Exception):
    """Base of every error the library raises on purpose."""


class ConfigError(TrajdistillError, ValueError):
    """A setting, option, name or input file is wrong; the message says which and how to fix it."""


class CannotActError(TrajdistillError):
    """A scripted expert cannot choose a turn from the episode's current state (e.g. one it has no plan for).

    Where an expert relabels another policy's states (`trajdistill onpolicy`), the turn is recorded as a
    relabel failure; in a plain episode it ends the episode as errored, like any other library error.
    """
