"""The ReAct loop: a LangGraph StateGraph whose one node is an agent step.

    START -> step (the policy generates, its turn is parsed, the tools run through the env) -> step ... -> END

Per-episode objects travel in the run config, so the state holds only data. Two engines run the same node and
routing: `direct` (the default) calls the node in a plain async loop; `langgraph` runs the compiled graph, whose
own bookkeeping costs ~0.75 ms of CPU a step (bench/RESULTS.md, issue 16). Malformed actions become observations
and the episode goes on until max steps; a PolicyError ends the episode as
errored and propagates to the caller, which records it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TypedDict

from trajdistill.envs import (FINAL_ANSWER, Env, Episode, Observation, Outcome, PolicyRequest, Task, Turn,
                              final_answer_spec)
from trajdistill.envs._react_text import ParsedAction, ParsedFinal, parse_react
from trajdistill.trajectories import PARSE_ERROR_TOOL, cut_off_detail, looped_detail

from ._policy import Policy

LOOP_ENGINES = ("direct", "langgraph")

REACT_INSTRUCTIONS = """You solve the task step by step. Every reply has exactly this form:
Thought: what you know and what to do next
Action: the tool name, one of [{names}]
Action Input: the tool's arguments as a JSON object
When you know the answer, reply instead with:
Thought: why this is the answer
Final Answer: the answer
Each action's result comes back to you as an observation."""


@dataclass
class _Action:
    tool: str
    arguments: Any
    call_id: str = ""


@dataclass
class Step:
    """What the policy node decided: actions to run, a final answer, or a parse error."""

    actions: list[_Action] = field(default_factory=list)
    final: str | None = None
    error: str | None = None


class LoopState(TypedDict, total=False):
    messages: list[dict[str, Any]]
    steps: int
    step: Step | None
    outcome: Outcome | None
    usage: dict[str, float]


@dataclass
class EpisodeResult:
    messages: list[dict[str, Any]]
    outcome: Outcome
    usage: dict[str, float]
    wall_s: float


def system_prompt(env: Env, policy: Policy, tools: list, task: Task | None = None) -> str:
    head = env.system_prompt() if task is None else env.system_prompt_for(task)
    parts = [head.strip()] if head else []
    if policy.action_format == "react":
        lines = [f"- {t.signature()}: {t.description}" for t in tools]
        parts.append("Tools:\n" + "\n".join(lines))
        parts.append(REACT_INSTRUCTIONS.format(names=", ".join(t.name for t in tools)))
    return "\n\n".join(parts)


def listed_tools(prompt: str) -> list[str]:
    """The tool names the Tools block of a ReAct system prompt (as `system_prompt` writes it) lists, in order."""
    _, found, rest = prompt.partition("\n\nTools:\n")
    if not found and prompt.startswith("Tools:\n"):
        rest = prompt.removeprefix("Tools:\n")
    block = rest.split("\n\n", 1)[0]
    return re.findall(r"^- (\w+)\(", block, re.MULTILINE)


def parse_turn(turn: Turn, action_format: str) -> Step:
    if action_format == "tools":
        if turn.tool_calls:
            return Step(actions=[_Action(c.name, c.arguments, c.id) for c in turn.tool_calls])
        return Step(final=turn.content.strip())  # a plain reply with no tool call is the answer
    parsed = parse_react(turn.content)
    if isinstance(parsed, ParsedFinal):
        return Step(final=parsed.answer)
    if isinstance(parsed, ParsedAction):
        return Step(actions=[_Action(parsed.tool, parsed.arguments)])
    return Step(error=parsed.message)


def assistant_message(turn: Turn) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if turn.reasoning:
        msg["reasoning"] = turn.reasoning
    if turn.tool_calls:
        msg["tool_calls"] = [
            {"id": c.id or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
            for c in turn.tool_calls
        ]
    return msg


@dataclass
class _Ctx:
    episode: Episode
    task: Task
    hints: dict[str, Any]
    tools: list


class ReActLoop:
    """Runs episodes of one env with one policy. Async; build once, run many episodes concurrently."""

    def __init__(self, env: Env, policy: Policy, *, max_steps: int = 20, sampling: dict[str, Any] | None = None,
                 engine: str = "direct", stop_on_repeat: int = 0):
        if engine not in LOOP_ENGINES:
            raise ValueError(f"loop engine must be one of {', '.join(LOOP_ENGINES)}, got {engine!r}")
        self.env = env
        self.policy = policy
        self.max_steps = max_steps
        self.stop_on_repeat = stop_on_repeat  # end after this many identical turns with identical observations
        self.sampling = sampling or {}
        self.tools = env.tools()
        self._answer_spec = final_answer_spec()
        self.system = system_prompt(env, policy, self.tools)
        self.engine = engine
        self._graph = None

    @property
    def graph(self):
        """The compiled LangGraph StateGraph of this loop (to stream, checkpoint or nest it as a subgraph)."""
        if self._graph is None:
            self._graph = self._build()
        return self._graph

    def _build(self):
        # langgraph takes most of a second to import: loaded when a graph is first asked for, not with the package
        from langgraph.graph import END, START, StateGraph

        g = StateGraph(LoopState)
        g.add_node("step", self._step_node)
        g.add_edge(START, "step")
        g.add_conditional_edges("step", self._route, {"step": "step", "end": END})
        return g.compile()

    async def _step_node(self, state: LoopState, config) -> LoopState:
        """One agent step, the policy's turn then its tool calls, as one graph node: one LangGraph superstep
        per step instead of two halves the graph's own cost per step (bench/RESULTS.md, issue 16)."""
        update = await self._policy_node(state, config)
        return update | await self._tool_node({**state, **update}, config)

    async def _policy_node(self, state: LoopState, config) -> LoopState:
        ctx: _Ctx = config["configurable"]["ctx"]
        request = PolicyRequest(messages=state["messages"], tools=ctx.tools, task=ctx.task,
                                hints=ctx.hints, sampling=self.sampling)
        turn = await self.policy(request)
        usage = dict(state["usage"])
        usage["prompt_tokens"] += turn.usage.get("prompt_tokens", 0)
        usage["completion_tokens"] += turn.usage.get("completion_tokens", 0)
        usage["latency_s"] += turn.latency_s
        step = parse_turn(turn, self.policy.action_format)
        return {"messages": state["messages"] + [assistant_message(turn)], "step": step,
                "steps": state["steps"] + 1, "usage": usage}

    async def _tool_node(self, state: LoopState, config) -> LoopState:
        ctx: _Ctx = config["configurable"]["ctx"]
        step, messages, usage = state["step"], list(state["messages"]), dict(state["usage"])
        if step.final is not None:
            return {"outcome": await ctx.episode.finish(step.final)}
        if step.error is not None:
            usage["invalid_actions"] += 1
            text = f"Error: {step.error}. Valid tools: {ctx.episode.valid_tools()}."
            messages.append({"role": "tool", "name": PARSE_ERROR_TOOL, "content": text, "error_kind": "invalid_action"})
            return {"messages": messages, "usage": usage}
        call_ids = [c["id"] for c in messages[-1].get("tool_calls") or []]
        for i, action in enumerate(step.actions):
            if action.tool == FINAL_ANSWER and self.env.answer_tool:
                problem = self._answer_spec.validate(action.arguments)
                if problem is None:
                    answer = str(action.arguments["answer"])
                    return {"messages": messages, "usage": usage, "outcome": await ctx.episode.finish(answer)}
                obs = Observation(f"Error: {problem}. Valid tools: {ctx.episode.valid_tools()}.", invalid=True)
            else:
                obs = await ctx.episode.call(action.tool, action.arguments)
            usage["invalid_actions"] += obs.invalid
            msg = {"role": "tool", "name": action.tool, "content": obs.text}
            if obs.error_kind:
                msg["error_kind"] = obs.error_kind
            if i < len(call_ids):
                msg["tool_call_id"] = call_ids[i]
            messages.append(msg)
            if obs.done:
                outcome = obs.outcome or await ctx.episode.finish(None)
                return {"messages": messages, "usage": usage, "outcome": outcome}
        return {"messages": messages, "usage": usage}

    def _route(self, state: LoopState) -> str:
        if state.get("outcome") is not None or state["steps"] >= self.max_steps or self._looping(state["messages"]):
            return "end"
        return "step"

    def _looping(self, messages: list[dict[str, Any]]) -> bool:
        """Whether the last `stop_on_repeat` turns were one turn and one observation, over and over: a greedy
        policy in such a loop almost never leaves it, and stopping can only turn a late success into a failure."""
        if self.stop_on_repeat < 2:
            return False
        exchanges = _exchanges(messages)[-self.stop_on_repeat:]
        return len(exchanges) == self.stop_on_repeat and all(e == exchanges[0] for e in exchanges)

    async def _drive(self, state: LoopState, config: dict[str, Any]) -> LoopState:
        """The graph's run: its one node until its router says end; a node's update merges like LangGraph's
        last-value channels."""
        if self.engine == "langgraph":
            return await self.graph.ainvoke(state, {**config, "recursion_limit": self.max_steps + 5})
        while True:
            state = {**state, **await self._step_node(state, config)}
            if self._route(state) == "end":
                return state

    async def run(self, task: Task, sandbox: Any = None) -> EpisodeResult:
        """Run one episode to a final answer, the env's done signal, or max steps."""
        start = time.monotonic()
        episode = await self.env.start(task, sandbox)
        try:
            initial = await episode.start()
            tools = self.env.tools_for(task)  # a mounted box lists only the tools relevant to this task
            system = system_prompt(self.env, self.policy, tools, task)
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": task.prompt + (f"\n\n{initial}" if initial else "")})
            state: LoopState = {
                "messages": messages, "steps": 0, "step": None, "outcome": None,
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0, "invalid_actions": 0},
            }
            # privileged hints can be costly to work out (twx samples gold paths): only for policies that read them
            hints = await asyncio.to_thread(episode.hints) if getattr(self.policy, "uses_hints", False) else {}
            ctx = _Ctx(episode, task, hints, tools)
            final = await self._drive(state, {"configurable": {"ctx": ctx}})
            outcome = final.get("outcome")
            if outcome is None:
                outcome = await episode.finish(None)
                looped = self._looping(final["messages"])
                outcome.detail = (looped_detail(self.stop_on_repeat, outcome.detail) if looped
                                  else cut_off_detail(self.max_steps, outcome.detail))
            usage = dict(final["usage"], steps=final["steps"])
            return EpisodeResult(final["messages"], outcome, usage, time.monotonic() - start)
        finally:
            await episode.close()


def _exchanges(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each assistant turn with the observations that answered it, as comparable tuples (call ids left out)."""
    out: list[list[Any]] = []
    for m in messages:
        if m["role"] == "assistant":
            calls = [(c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls") or []]
            out.append([m.get("content"), tuple(calls)])
        elif m["role"] == "tool" and out:
            out[-1].append((m.get("name"), m.get("content")))
    return [tuple(e) for e in out]
