"""Renamed box tools: an augmentation of boxed runs for box-literate students (issue 18).

A student trained on boxed runs can learn a box's tool names by heart, and then has nothing to go on when a box it
never saw lists other names. Here, a share of the boxed trajectories get fresh, plain names for their box tools
(`find_quantity`, `work_out_term`), the same in the tool list, every Action, Thought and observation; the task text
is never changed. A student that sees a tool under many names has to read the list it is given to call one.
With `params`, the renamed tools' parameters get fresh names too (`amount`, `size`), in the tool list and every
Action Input, so that the arguments are copied from the signature the list shows, not recalled.

Only ReAct text trajectories carry their tool list in the system prompt; a trajectory without a listed box tool
(a box-less run, native tool calls) is copied unchanged.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from trajdistill import __version__
from trajdistill.agents import listed_tools
from trajdistill.envs import FINAL_ANSWER, ConfigError, make_env
from trajdistill.envs._react_text import ParsedAction, format_action, parse_react
from trajdistill.trajectories import Message, RunStore, ToolCallMsg, Trajectory, check_output

from ._mount import READ_SKILL

VERBS = ("compute", "find", "get", "calc", "work_out", "evaluate", "determine", "derive", "solve", "figure")
NOUNS = ("value", "result", "quantity", "number", "total", "amount", "term", "output", "answer", "figure")
PARAMS = ("amount", "size", "count", "level", "start", "stop", "step", "top", "first", "second", "third", "value",
          "limit", "base_value", "width", "height", "length", "factor", "items", "values", "group", "scale", "power",
          "offset", "span", "rate", "weight", "degree", "place", "index")


@cache
def _own_tools(env: str) -> frozenset[str]:
    """The tools an env offers by itself (plus the loop's final_answer): never renamed."""
    return frozenset({t.name for t in make_env(env).tools()} | {FINAL_ANSWER, READ_SKILL})


def _listed(traj: Trajectory) -> list[str]:
    """The tool names the trajectory's system prompt lists."""
    system = next((m for m in traj.messages if m.role == "system"), None)
    return listed_tools(system.content or "") if system is not None else []


def box_tools(traj: Trajectory, listed: list[str] | None = None) -> list[str]:
    """The box tools the trajectory's system prompt lists: every listed tool its env does not offer itself."""
    own = _own_tools(traj.env.name)
    return [n for n in (_listed(traj) if listed is None else listed) if n not in own]


def fresh_names(old: list[str], taken: set[str], rng: random.Random) -> dict[str, str]:
    """A new plain name for each of `old`, none of them in `taken` or given twice."""
    free = [f"{v}_{n}" for v in VERBS for n in NOUNS if f"{v}_{n}" not in taken]
    if len(free) < len(old):
        raise ConfigError(f"{len(old)} box tools in one prompt: more than the {len(free)} free names")
    return dict(zip(old, rng.sample(free, len(old))))


def renamed(traj: Trajectory, rng: random.Random, params: bool = False) -> Trajectory:
    """`traj` with fresh names for its box tools (itself when it lists none), and with `params` for their
    parameters. Spans are dropped: they are character ranges of the old text, and training segments the new
    text again."""
    listed = _listed(traj)
    old = box_tools(traj, listed)
    if not old:
        return traj
    if params:
        traj = _params_renamed(traj, old, rng)
    names = fresh_names(old, set(listed), rng)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(old, key=len, reverse=True))) + r")\b")
    messages = [m if m.role == "user" else _renamed_message(m, pattern, names) for m in traj.messages]
    return traj.model_copy(update={"messages": messages, "spans": []})


def _params_renamed(traj: Trajectory, tools: list[str], rng: random.Random) -> Trajectory:
    """`traj` with fresh parameter names for `tools`: in their signatures in the system prompt, in each ReAct
    Action Input and native tool call of theirs."""
    system = next(m for m in traj.messages if m.role == "system")
    maps: dict[str, dict[str, str]] = {}
    for tool in tools:
        line = re.search(rf"^- {re.escape(tool)}\(([^)]*)\)", system.content or "", re.MULTILINE)
        old = [p.split(":")[0].strip() for p in line.group(1).split(",") if p.strip()] if line else []
        if old and len(old) <= len(PARAMS):
            maps[tool] = dict(zip(old, rng.sample(PARAMS, len(old))))
    messages = [_signature_renamed(m, maps) if m.role == "system" else
                _arguments_renamed(m, maps) if m.role == "assistant" else m for m in traj.messages]
    return traj.model_copy(update={"messages": messages})


def _signature_renamed(m: Message, maps: dict[str, dict[str, str]]) -> Message:
    def sub(g: re.Match[str]) -> str:
        names = maps[g.group(1)]
        return f"- {g.group(1)}(" + re.sub(r"(\w+)(?=:)", lambda p: names.get(p.group(1), p.group(1)), g.group(2)) + ")"

    pattern = re.compile(r"^- (" + "|".join(map(re.escape, maps)) + r")\(([^)]*)\)", re.MULTILINE)
    return m.model_copy(update={"content": pattern.sub(sub, m.content or "")}) if maps else m


def _arguments_renamed(m: Message, maps: dict[str, dict[str, str]]) -> Message:
    update: dict[str, Any] = {}
    parsed = parse_react(m.content or "")
    if isinstance(parsed, ParsedAction) and parsed.tool in maps and isinstance(parsed.arguments, dict):
        update["content"] = format_action(parsed.thought, parsed.tool, _keyed(parsed.arguments, maps[parsed.tool]))
    if m.tool_calls:
        update["tool_calls"] = [_call_arguments_renamed(c, maps) for c in m.tool_calls]
    return m.model_copy(update=update) if update else m


def _call_arguments_renamed(call: ToolCallMsg, maps: dict[str, dict[str, str]]) -> ToolCallMsg:
    fn = call.function
    try:
        args = json.loads(fn.arguments or "{}")
    except ValueError:
        return call
    if fn.name not in maps or not isinstance(args, dict):
        return call
    arguments = json.dumps(_keyed(args, maps[fn.name]))
    return call.model_copy(update={"function": fn.model_copy(update={"arguments": arguments})})


def _keyed(args: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """`args` under the new parameter names, in their order."""
    return {names.get(k, k): v for k, v in args.items()}


def _renamed_message(m: Message, pattern: re.Pattern[str], names: dict[str, str]) -> Message:
    def sub(text: str | None) -> str | None:
        return None if text is None else pattern.sub(lambda g: names[g.group(1)], text)

    update: dict[str, Any] = {"content": sub(m.content) or "", "reasoning": sub(m.reasoning),
                              "name": names.get(m.name, m.name)}
    if m.tool_calls:
        update["tool_calls"] = [_renamed_call(c, names) for c in m.tool_calls]
    return m.model_copy(update=update)


def _renamed_call(call: ToolCallMsg, names: dict[str, str]) -> ToolCallMsg:
    fn = call.function
    return call.model_copy(update={"function": fn.model_copy(update={"name": names.get(fn.name, fn.name)})})


@dataclass
class RenameReport:
    trajectories: int = 0
    boxed: int = 0  # listed at least one box tool
    renamed: int = 0


def rename_tools(run: str | Path, out: str | Path, *, share: float = 0.5, seed: int = 0,
                 params: bool = False) -> RenameReport:
    """Copy `run` to the new run `out`, each boxed trajectory with fresh box tool names (and with `params`,
    parameter names) with probability `share`."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"--share must be between 0 and 1, got {share}")
    check_output(out, [run], kind="dir")
    source = RunStore.open(run)
    rng, report = random.Random(seed), RenameReport()
    config = {**source.config, "command": "skills rename-tools", "renamed_from": str(Path(run).resolve()),
              "rename_share": share, "rename_seed": seed, "rename_params": params, "package_version": __version__}
    with RunStore.create(out, config) as store:
        for traj in source.load():
            report.trajectories += 1
            boxed = bool(box_tools(traj))
            report.boxed += boxed
            if boxed and rng.random() < share:
                traj = renamed(traj, rng, params)
                report.renamed += 1
            store.append(traj)
    return report
