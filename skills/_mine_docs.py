"""Docs mining (Trace2Skill): one SKILL.md per task type from many trajectories.

Without an analyst, a deterministic summary per task type: the action sequences of the
successful trajectories with counts, typical argument shapes, the common failure
observations with what fixed them, and a worked example.

With an analyst, that summary is a frozen snapshot. Per-trajectory analysts (a success
analyst and a failure analyst) propose JSON patches to it in parallel; a hierarchical merge
(batches of 5, at most 5 levels) dedupes them, resolves conflicts by prevalence and keeps
the specific, prevalent ones, which are then applied to the snapshot.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from trajdistill.trajectories import Trajectory

from ._box import SkillDraft
from ._mine_tools import Listener, StepRecord, _clip, _code_of, ask, task_prompt, trajectory_steps

BATCH = 5
MAX_LEVELS = 5
MIN_SUPPORT = 2
OPS = ("insert", "add_section", "replace")
GENERIC = ("be careful", "double check", "double-check", "think step by step", "pay attention", "try again")
COMMON_CALLS = {"print", "range", "len", "int", "str", "float", "list", "sum", "zip", "enumerate", "abs", "min",
                "max", "sorted", "any", "all", "append", "values", "items", "keys", "round", "map"}


Snapshot = dict[str, str]  # section title -> markdown text, in order


@dataclass
class Edit:
    op: str
    section: str
    text: str
    support: set[str] = field(default_factory=set)  # trajectory ids that proposed it
    judged: bool = False  # an analyst merge chose to keep it

    def key(self) -> tuple[str, str, str]:
        return self.op, self.section.strip().lower(), _norm(self.text)


@dataclass
class DocsMining:
    skills: list[SkillDraft]
    trajectories: int
    proposed: int = 0  # analyst patches that parsed
    kept: int = 0  # patches applied after the merge
    unusable: int = 0  # analyst replies that held no valid patch list

    @property
    def tools(self) -> list:
        return []

    def report(self) -> dict[str, Any]:
        return {"trajectories": self.trajectories, "skills": len(self.skills), "patches_proposed": self.proposed,
                "patches_kept": self.kept, "unusable_replies": self.unusable}

    def summary(self) -> str:
        s = f"{len(self.skills)} skills from {self.trajectories} trajectories"
        if self.proposed or self.unusable:
            s += f"; {self.kept} of {self.proposed} patches kept, {self.unusable} unusable analyst replies"
        return s


# --------------------------------------------------------------------------- the deterministic summary


@dataclass
class _Item:
    run: str
    traj: Trajectory
    steps: list[StepRecord]


def task_type(traj: Trajectory) -> str:
    return traj.category or "general"


def skill_name(env: str, category: str) -> str:
    parts = re.split(r"[^a-z0-9]+", env.lower()) + re.split(r"[^a-z0-9]+", category.lower())
    out: list[str] = []
    for p in parts:
        if p and p not in out:
            out.append(p)
    return "-".join(out)[:64].strip("-") or "skill"


def step_label(step: StepRecord) -> str:
    if step.tool == "final_answer":
        return "final answer"
    code = _code_of(step.args)
    if code is not None:
        calls = _distinctive_calls(code)
        return f"{step.tool} ({', '.join(calls[:2])})" if calls else step.tool
    if isinstance(step.args, dict) and len(step.args) == 1:
        value = next(iter(step.args.values()))
        if isinstance(value, str) and value.split():
            return f"{step.tool}: {value.split()[0]}"
    return step.tool


def _distinctive_calls(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    names = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            fn = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            if fn and fn not in COMMON_CALLS and fn not in names:
                names.append(fn)
    return names


def sequence(steps: list[StepRecord]) -> str:
    """Step labels in order, with a run of the same label shown once with `+`."""
    out: list[str] = []
    for label in (step_label(s) for s in steps):
        if out and out[-1].rstrip("+") == label:
            out[-1] = label + "+"
        else:
            out.append(label)
    return " → ".join(out)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _shape(text: str) -> str:
    """A prompt or error line with its numbers and quoted values blanked out."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\d+(?:[.,]\d+)*", "N", text)


def prompt_patterns(prompts: list[str], k: int = 2) -> list[str]:
    heads = []
    for p in prompts:
        first = p.strip().split("\n")[0]
        first = re.sub(r"^(Task|Question)\s*:\s*", "", first)
        heads.append(" ".join(_shape(first).split()[:8]))
    return [h for h, _ in Counter(heads).most_common(k)]


def describe(env: str, category: str, items: list[_Item]) -> str:
    """One short line (a mounted box lists it in every prompt the skill is relevant to): when to use it."""
    patterns = prompt_patterns([task_prompt(i.traj) for i in items], k=1)
    shown = f', like "{patterns[0]}…"' if patterns else ""
    return _clip(f"Use for {env} tasks of type {category}{shown}: steps and fixes.", 1000)


def summarise(env: str, category: str, items: list[_Item]) -> tuple[Snapshot, str]:
    """The snapshot sections for one task type, and a references document of worked examples."""
    good = [i for i in items if i.traj.outcome.success]
    sections: Snapshot = {
        "When to use": _when(env, category, items),
        "Strategy that worked": _strategy(good, len(items)),
        "Arguments": _arguments(good),
        "Common failures and fixes": _failures(items),
    }
    examples = sorted(good, key=lambda i: (len(i.steps), i.traj.id))[:3]
    if examples:
        sections["Worked example"] = _example(examples[0], 160) + \
            "\n\nMore examples: [references/examples.md](references/examples.md)."
    refs = "# Worked examples\n\n" + "\n\n".join(_example(e, 600) for e in examples) + "\n"
    return sections, refs


def _when(env: str, category: str, items: list[_Item]) -> str:
    prompts = list(dict.fromkeys(_clip(task_prompt(i.traj).split("\n")[0], 160) for i in items))[:3]
    return f"Tasks of type `{category}` in the `{env}` environment, for example:\n" + \
        "\n".join(f"- {p}" for p in prompts)


def _strategy(good: list[_Item], total: int) -> str:
    if not good:
        return f"None of the {total} trajectories succeeded, so no strategy is known to work yet."
    seqs = Counter(sequence([s for s in i.steps if not s.failed]) for i in good)  # errors have their own section
    lines = [f"{len(good)} of {total} trajectories succeeded. Their action sequences, most common first:"]
    lines += [f"- {seq} ({n} of {len(good)})" for seq, n in seqs.most_common(3)]
    mean = sum(len(i.steps) for i in good) / len(good)
    lines.append(f"\nSuccessful runs took {mean:.1f} actions on average.")
    return "\n".join(lines)


def _arguments(good: list[_Item]) -> str:
    shapes: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, list[str]] = defaultdict(list)
    for item in good:
        for s in item.steps:
            if s.tool == "final_answer" or not isinstance(s.args, dict):
                continue
            shapes[s.tool][", ".join(f"{k}: {type(v).__name__}" for k, v in s.args.items())] += 1
            ex = _clip(json.dumps(s.args, ensure_ascii=False), 160)
            if ex not in examples[s.tool] and len(examples[s.tool]) < 3:
                examples[s.tool].append(ex)
    if not shapes:
        return "No tool arguments were seen in successful trajectories."
    lines = []
    for tool, counter in shapes.items():
        shape, n = counter.most_common(1)[0]
        lines.append(f"- `{tool}({shape})`, used {sum(counter.values())} times; e.g.")
        lines += [f"  - `{e}`" for e in examples[tool]]
    return "\n".join(lines)


def _failures(items: list[_Item]) -> str:
    errors: Counter = Counter()
    fixes: dict[str, Counter] = defaultdict(Counter)
    for item in items:
        for k, s in enumerate(item.steps):
            if not s.failed:
                continue
            err = _clip(_shape(_first_error_line(s.observation)), 120)
            errors[err] += 1
            nxt = next((t for t in item.steps[k + 1:] if not t.failed), None)
            if nxt is not None:
                fixes[err][f"{step_label(nxt)} `{_clip(json.dumps(nxt.args, ensure_ascii=False), 80)}`"] += 1
    failed = [i for i in items if not i.traj.outcome.success]
    lines = []
    for err, n in errors.most_common(5):
        fix = fixes[err].most_common(1)
        lines.append(f"- `{err}` ({n}x)" + (f"; fixed next by {fix[0][0]}" if fix else "; never fixed"))
    if failed:
        outcomes = Counter(_clip(i.traj.outcome.detail or i.traj.outcome.error or "no answer", 100) for i in failed)
        lines.append(f"- {len(failed)} trajectories failed; e.g. " +
                     "; ".join(f"{d} ({n}x)" for d, n in outcomes.most_common(2)))
    return "\n".join(lines) if lines else "No errors or failed trajectories were seen."


def _first_error_line(obs: str) -> str:
    lines = [line for line in obs.strip().split("\n") if line.strip()]
    for pattern in (r"\w*(Error|Exception)\b", r"not a valid|error", r"\[exit code|\[timed out|\[killed"):
        errs = [line for line in lines if re.search(pattern, line)]  # the exception line beats the exit code
        if errs:
            return errs[-1].strip()
    return lines[-1].strip() if lines else ""


def _example(item: _Item, width: int) -> str:
    out = [f"Task: {_clip(task_prompt(item.traj), width)}", ""]
    for s in item.steps:
        if s.tool == "final_answer":
            out.append(f"Final answer: {_clip(s.args.get('answer', ''), 80)}")
            continue
        out.append(f"Action: {s.tool} {_clip(json.dumps(s.args, ensure_ascii=False), width)}")
        out.append(f"Observation: {_clip(s.observation, width // 2)}")
    return "```\n" + "\n".join(out) + "\n```"


def render_body(title: str, sections: Snapshot) -> str:
    return f"# {title}\n\n" + "\n\n".join(f"## {name}\n\n{text.strip()}" for name, text in sections.items())


# --------------------------------------------------------------------------- analysts and the merge

SUCCESS_ANALYST = (
    "You improve a skill document that helps an agent solve tasks. You read one SUCCESSFUL trajectory and "
    "propose edits that capture what made it work, so that other agents can repeat it. Only propose edits "
    "that are specific to this kind of task (name tools, argument shapes, pitfalls), never generic advice.")
FAILURE_ANALYST = (
    "You improve a skill document that helps an agent solve tasks. You read one trajectory that FAILED or hit "
    "errors and propose edits that would have prevented the failure. Only propose edits that are specific "
    "to this kind of task (name the error and the fix), never generic advice.")
PATCH_FORMAT = (
    'Reply with a JSON list of patches in a ```json block. Each patch is {"op": "insert" | "add_section" | '
    '"replace", "section": "<section title>", "text": "<markdown>"}. insert appends a bullet to a section, '
    "add_section adds a new section, replace rewrites a section. Reply [] when nothing should change.")
MERGE_PROMPT = (
    "You merge patch proposals for a skill document. Each proposal lists how many trajectories proposed it. "
    "Remove duplicates, resolve contradictions in favour of the more common proposal, and keep only edits "
    "that are specific and useful. " + PATCH_FORMAT)


def parse_patches(text: str) -> list[dict[str, str]] | None:
    """The patch list in an analyst reply; None when there is none."""
    m = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.DOTALL)
    raw = m.group(1) if m else text[text.find("["): text.rfind("]") + 1]
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, list):
        return None
    return [p for p in data if isinstance(p, dict) and p.get("op") in OPS
            and isinstance(p.get("section"), str) and p["section"].strip()
            and isinstance(p.get("text"), str) and p["text"].strip()]


def transcript(item: _Item, width: int = 300) -> str:
    lines = [f"Task: {_clip(task_prompt(item.traj), 600)}"]
    for s in item.steps:
        if s.thought:
            lines.append(f"Thought: {_clip(s.thought, width)}")
        if s.tool == "final_answer":
            lines.append(f"Final answer: {_clip(s.args.get('answer', ''), 100)}")
        else:
            lines.append(f"Action: {s.tool} {_clip(json.dumps(s.args, ensure_ascii=False), width)}")
            lines.append(f"Observation: {_clip(s.observation, width)}")
    o = item.traj.outcome
    lines.append(f"Outcome: {'success' if o.success else 'failure'} ({_clip(o.detail or o.error or '', 200)})")
    return "\n".join(lines)


async def propose(analyst: Any, title: str, snapshot: Snapshot, item: _Item) -> list[Edit] | None:
    failed = not item.traj.outcome.success or any(s.failed for s in item.steps)
    system = (FAILURE_ANALYST if failed else SUCCESS_ANALYST) + "\n\n" + PATCH_FORMAT
    prompt = (f"Skill document (frozen):\n\n{render_body(title, snapshot)}\n\n---\nTrajectory:\n\n"
              f"{transcript(item)}")
    patches = parse_patches(await ask(analyst, system, prompt))
    if patches is None:
        return None
    return [Edit(p["op"], p["section"].strip(), p["text"].strip(), {item.traj.id}) for p in patches]


def merge_edits(groups: list[list[Edit]]) -> list[Edit]:
    """Deterministic merge: dedupe equal edits (their support adds up), then one replace per section."""
    merged: dict[tuple[str, str, str], Edit] = {}
    for e in (e for g in groups for e in g):
        if e.key() in merged:
            merged[e.key()].support |= e.support
            merged[e.key()].judged |= e.judged
        else:
            merged[e.key()] = Edit(e.op, e.section, e.text, set(e.support), e.judged)
    out, replaced = [], {}
    for e in merged.values():
        if e.op != "replace":
            out.append(e)
        elif (sec := e.section.lower()) not in replaced or len(e.support) > len(replaced[sec].support):
            replaced[sec] = e  # contradicting rewrites of one section: the more prevalent wins
    return out + list(replaced.values())


async def merge_with_analyst(analyst: Any, groups: list[list[Edit]]) -> list[Edit]:
    """The analyst merges a batch; edits it keeps count as judged. Falls back to the deterministic merge."""
    base = merge_edits(groups)
    if not base:
        return base
    listing = json.dumps([{"op": e.op, "section": e.section, "text": e.text, "proposed_by": len(e.support)}
                          for e in base], ensure_ascii=False, indent=1)
    patches = parse_patches(await ask(analyst, MERGE_PROMPT, f"Proposals:\n```json\n{listing}\n```"))
    if not patches:
        return base
    out = []
    for p in patches:
        support = set().union(*[e.support for e in base if _similar(e, p)] or [set()])
        if not support:
            support = set().union(*[e.support for e in base if e.section.lower() == p["section"].strip().lower()]
                                  or [set()])
        out.append(Edit(p["op"], p["section"].strip(), p["text"].strip(), support, judged=True))
    return out


def _similar(e: Edit, p: dict[str, str]) -> bool:
    if e.section.strip().lower() != p["section"].strip().lower():
        return False
    a, b = set(_norm(e.text).split()), set(_norm(p["text"]).split())
    return bool(a and b) and len(a & b) / len(a | b) >= 0.5


async def hierarchical_merge(groups: list[list[Edit]], merge_with: Any = None) -> list[Edit]:
    """Merge per-trajectory edit lists in batches of 5, level by level (at most 5 levels)."""
    level = 0
    while len(groups) > 1 and level < MAX_LEVELS:
        batches = [groups[i:i + BATCH] for i in range(0, len(groups), BATCH)]
        if merge_with is not None:  # a batch of one has nothing to merge: it passes through unjudged
            groups = list(await asyncio.gather(*(merge_with_analyst(merge_with, b) if len(b) > 1
                                                 else _same(b[0]) for b in batches)))
        else:
            groups = [merge_edits(b) for b in batches]
        level += 1
    return merge_edits(groups)


async def _same(group: list[Edit]) -> list[Edit]:
    return group


def specific(e: Edit) -> bool:
    words = _norm(e.text).split()
    return len(words) >= 5 and not any(g in " ".join(words) for g in GENERIC)


def keep(edits: list[Edit]) -> list[Edit]:
    return [e for e in edits if specific(e) and (len(e.support) >= MIN_SUPPORT or e.judged)]


def apply_edits(snapshot: Snapshot, edits: list[Edit]) -> Snapshot:
    out = dict(snapshot)
    lookup = {k.lower(): k for k in out}
    for e in sorted(edits, key=lambda e: e.op != "replace"):  # rewrites first, then additions on top
        name = lookup.get(e.section.lower(), e.section)
        lookup[e.section.lower()] = name
        if e.op == "replace":
            out[name] = e.text
        elif e.op == "insert":
            bullet = e.text if e.text.startswith("- ") else f"- {e.text}"
            out[name] = (out.get(name, "").rstrip() + "\n" + bullet).strip()
        else:
            out[name] = (out.get(name, "").rstrip() + "\n\n" + e.text).strip()
    return out


# --------------------------------------------------------------------------- the pipeline


async def mine_docs(trajs: list[tuple[str, Trajectory]], *, env: str, analyst: Any = None, workers: int = 4,
                    analyst_merge: bool = True, listener: Listener | None = None) -> DocsMining:
    """One SkillDraft per task type. With an analyst, its patches refine the deterministic snapshot."""
    by_type: dict[str, list[_Item]] = defaultdict(list)
    for run, traj in trajs:
        by_type[task_type(traj)].append(_Item(run, traj, trajectory_steps(traj)))
    result = DocsMining([], len(trajs))
    sem = asyncio.Semaphore(max(1, workers))
    for category, items in sorted(by_type.items()):
        title = f"{env} · {category}"
        snapshot, refs = summarise(env, category, items)
        if analyst is not None:
            snapshot = await _refine(analyst, title, snapshot, items, sem, result, analyst_merge, listener)
        sources: dict[str, list[str]] = defaultdict(list)
        for i in items:
            sources[i.run].append(i.traj.id)
        result.skills.append(SkillDraft(skill_name(env, category), describe(env, category, items),
                                        render_body(title, snapshot), {"examples.md": refs}, dict(sources)))
    return result


async def _refine(analyst: Any, title: str, snapshot: Snapshot, items: list[_Item], sem: asyncio.Semaphore,
                  result: DocsMining, analyst_merge: bool, listener: Listener | None) -> Snapshot:
    done = 0

    async def one(item: _Item) -> list[Edit]:
        nonlocal done
        async with sem:
            edits = await propose(analyst, title, snapshot, item)
        done += 1
        if listener:
            listener(f"analyse {title}", done, len(items))
        if edits is None:
            result.unusable += 1
            return []
        result.proposed += len(edits)
        return edits

    groups = list(await asyncio.gather(*(one(i) for i in items)))
    merged = keep(await hierarchical_merge(groups, merge_with=analyst if analyst_merge else None))
    result.kept += len(merged)
    return apply_edits(snapshot, merged)


async def docs_miner(job: Any) -> DocsMining:
    """The `docs` miner (a MineJob in, see _miners.py)."""
    return await mine_docs(job.trajs, env=job.env, analyst=job.analyst, workers=job.workers, listener=job.listener)
