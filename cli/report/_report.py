"""Self-contained HTML pages: the trajectory viewer (`trajdistill view`) and the demo report.

Both pages work offline: inline CSS and JS, images as data URIs, trajectories embedded as JSON in a
`<script type="application/json">` tag. Trajectory text is untrusted, so the JSON escapes `<`, `>`
and `&`, and the viewer script only ever sets `textContent`; everything Python writes into HTML
goes through `html.escape`.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from trajdistill.agents import AgentResult, EvalResults, GateReport
from trajdistill.skills import VALIDATION_SECTION, BoxError, SkillBox
from trajdistill.train import final_losses, plot_losses, read_token_kl
from trajdistill.trajectories import (RUN_FILE, ComposeReport, CurateReport, GroupStats, RunError, RunStore, Span,
                                      Trajectory, assistant_text, check_output, read_result, segment_as_env)

VIEW_FILE = "view.html"
REPORT_FILE = "report.html"
NOT_RUN = "not run"

RunsArg = Sequence["str | Path"] | Mapping[str, "str | Path"]


# ---- finding runs ---------------------------------------------------------------------------------


def find_runs(path: str | Path) -> dict[str, Path]:
    """Run name -> run dir: `path` itself when it is a run, else every run below it (names relative to it)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a directory; give a run directory or a directory holding runs")
    if (path / RUN_FILE).exists():
        return {path.resolve().name: path}
    runs = sorted(p.parent for p in path.rglob(RUN_FILE))
    if not runs:
        raise RunError(f"{path} holds no run directory (no {RUN_FILE} in it or below it)")
    return {str(r.relative_to(path)): r for r in runs}


def _named(runs: RunsArg) -> dict[str, Path]:
    if isinstance(runs, Mapping):
        return {str(k): Path(v) for k, v in runs.items()}
    named: dict[str, Path] = {}
    for r in map(Path, runs):
        name = r.resolve().name
        named[name if name not in named else str(r)] = r
    return named


# ---- the viewer's data ----------------------------------------------------------------------------


def message_spans(traj: Trajectory) -> dict[int, list[Span]]:
    """Spans per assistant message: the trajectory's own where they fit the text, else the env's segmenter's."""
    texts = {i: assistant_text(m) for i, m in enumerate(traj.messages) if m.role == "assistant"}
    stored: dict[int, list[Span]] = {}
    for s in traj.spans:
        stored.setdefault(s.message, []).append(s)
    usable = {i: ss for i, ss in stored.items()
              if i in texts and all(s.field == "content" and s.end <= len(texts[i]) for s in ss)}
    out = dict(usable)
    if len(usable) < len(texts):
        for s in segment_as_env(traj):
            if s.message not in usable:
                out.setdefault(s.message, []).append(s)
    return out


def cut(text: str, spans: list[Span]) -> list[list[str]]:
    """[kind, piece] in text order; text no span covers gets the kind ""."""
    parts: list[list[str]] = []
    pos = 0
    for s in sorted(spans, key=lambda s: (s.start, s.end)):
        start, end = max(s.start, pos), min(s.end, len(text))
        if start > pos:
            parts.append(["", text[pos:start]])
        if end > start:
            parts.append([s.kind, text[start:end]])
            pos = end
    if pos < len(text):
        parts.append(["", text[pos:]])
    return parts


def trajectory_record(traj: Trajectory, run: int, prompts: dict[str, int],
                      kl: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the viewer shows of one trajectory; repeated system prompts are stored once in `prompts`. `kl`: its
    token KL record (on-policy rollouts), overlaid on the assistant texts."""
    spans = message_spans(traj)
    token_kl = (kl or {}).get("messages", {})
    msgs: list[dict[str, Any]] = []
    for i, m in enumerate(traj.messages):
        if m.role == "system":
            msgs.append({"r": "system", "s": prompts.setdefault(m.content, len(prompts))})
        elif m.role == "assistant":
            msgs.append({"r": "assistant", "p": cut(assistant_text(m), spans.get(i, [])),
                         **({"kl": token_kl[str(i)]} if str(i) in token_kl else {})})
        else:
            msgs.append({"r": m.role, "t": m.content, **({"n": m.name} if m.name else {})})
    o, u = traj.outcome, traj.usage
    return {
        "id": traj.id, "run": run, "task": traj.task_id, "teacher": traj.teacher.spec,
        "env": f"{traj.env.name} v{traj.env.version}", "split": traj.split, "cat": traj.category,
        "diff": traj.difficulty, "ok": o.success, "reward": o.reward, "answer": o.final_answer,
        "detail": o.detail, "error": o.error, "strategy": traj.provenance.strategy,
        "from": traj.provenance.composed_from, "skills": traj.provenance.skills,
        "usage": {"steps": u.steps, "invalid actions": u.invalid_actions, "prompt tokens": u.prompt_tokens,
                  "completion tokens": u.completion_tokens, "total tokens": u.total_tokens,
                  "policy latency (s)": round(u.latency_s, 3), "wall (s)": round(u.wall_s, 3)},
        "msgs": msgs,
    }


def _featured(records: list[dict[str, Any]]) -> int:
    """The trajectory shown first: the earliest success that reasons, acts and reads an observation,
    preferring one with context spans too (a composed one shows every kind); else the first."""
    def rank(rec: dict[str, Any]) -> int:
        kinds = {k for m in rec["msgs"] for k, _ in m.get("p", [])}
        if not (rec["ok"] and {"reason", "act"} <= kinds and any(m["r"] == "tool" for m in rec["msgs"])):
            return 0
        return 2 if "context" in kinds else 1

    ranks = [rank(r) for r in records]
    return ranks.index(max(ranks)) if ranks else 0


def viewer_data(runs: RunsArg) -> dict[str, Any]:
    """The JSON the viewer embeds. Raises RunError for a bad run dir or when there are no trajectories."""
    named = _named(runs)
    prompts: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    for run_index, (name, path) in enumerate(named.items()):
        trajs = sorted(RunStore.open(path).iter_trajectories(), key=lambda t: (t.task_id, t.teacher.spec))
        kl = read_token_kl(path)
        records += [trajectory_record(t, run_index, prompts, kl.get(t.id)) for t in trajs]
    if not records:
        raise RunError(f"no trajectories in {', '.join(str(p) for p in named.values())}")
    return {"runs": list(named), "prompts": list(prompts), "trajectories": records, "first": _featured(records)}


def _script_json(data: Any) -> str:
    """JSON that cannot end its <script> element or open a comment, whatever strings it holds."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def viewer_fragment(runs: RunsArg, *, element_id: str = "td-viewer") -> str:
    """The viewer as a block of HTML for any page that also has static/viewer.css and static/viewer.js."""
    data = _script_json(viewer_data(runs))
    return (f'<div class="td-viewer" data-source="{element_id}-data">'
            f'<p class="td-noscript">the trajectory viewer needs JavaScript</p></div>\n'
            f'<script type="application/json" id="{element_id}-data">{data}</script>')


def render_viewer(runs: RunsArg, *, title: str = "trajectories") -> str:
    """One self-contained HTML page that browses the trajectories of `runs` (paths, or name -> path)."""
    return _page("viewer.html.j2", title=title, page_class="td-view-page", legend=Markup(_legend()),
                 viewer=Markup(viewer_fragment(runs)))


def write_viewer(path: str | Path, out: str | Path | None = None, *, force: bool = False) -> Path:
    """`trajdistill view`: the viewer page for a run, or for every run under a directory.

    The default PATH/view.html is the viewer's own file, rewritten freely; an `out` the user names must lie
    outside every run and is overwritten only with `force`."""
    path = Path(path)
    runs = find_runs(path)
    if out is None:
        out = check_output(path / VIEW_FILE, force=True)
    else:
        out = check_output(out, runs.values(), force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_viewer(runs, title=f"trajectories: {path.resolve().name}"), encoding="utf-8")
    return out


# ---- the report -------------------------------------------------------------------------------------


def build_report(out_dir: str | Path, summary: dict[str, Any], *, runs: Mapping[str, str | Path] | None = None,
                 eval_results: str | Path | None = None, train_dir: str | Path | None = None,
                 compose_report: str | Path | None = None, box_dir: str | Path | None = None,
                 title: str = "trajdistill demo") -> Path:
    """Write `out_dir/report.html`. Every input may be None or missing: its section then says "not run".

    eval_results: results.json or the eval dir holding it (success.png is read next to it).
    train_dir: the `trajdistill train --out` dir (loss.png, trainer_state.json, curriculum.json).
    compose_report: compose_report.json or the composed run dir holding it.
    box_dir: a skill box directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        ("eval", "Evaluation on held-out tasks", eval_section(eval_results)),
        ("training", "Span-aware curriculum SFT", training_section(train_dir)),
        ("compose", "Composition (DualDistill)", compose_section(compose_report)),
        ("skills", "Skill box", box_section(box_dir)),
        ("viewer", "Trajectories", viewer_section(runs)),
    ]
    return write_report_page(out / REPORT_FILE, f"{title} report", title, summary, sections)


def write_report_page(path: Path, title: str, heading: str, summary: Mapping[str, Any],
                      sections: list[tuple[str, str, str]]) -> Path:
    """Write a report page to `path`: the summary as cards, then each (anchor, heading, HTML body) section."""
    page = _page("report.html.j2", title=title, heading=heading, page_class="td-report",
                 summary=Markup(summary_html(summary)),
                 sections=[(k, name, Markup(part)) for k, name, part in sections])
    path.write_text(page, encoding="utf-8")
    return path


CURATE_REPORT_FILE = "curate.html"


def build_curate_report(out_dir: str | Path, report: CurateReport, plot: str | Path | None = None) -> Path:
    """Write `out_dir/curate.html` from what `curate` returned: the counts per step with the reasons,
    examples of what each step removed, and the reasoning lengths per category before and after."""
    out = Path(out_dir)
    summary = {"trajectories in": report.total_in, "kept": report.total_out, "seed": report.seed,
               "kept per run": dict(report.kept_by_run)}
    sections = [("curate-steps", "Steps, in order", curate_steps_html(report)),
                ("curate-removed", "Examples of what was removed", curate_examples_html(report)),
                ("curate-lengths", "Reasoning length per category, before and after",
                 curate_lengths_html(report, Path(plot) if plot else None))]
    return write_report_page(out / CURATE_REPORT_FILE, "trajdistill curate", f"curate: {out.resolve().name}",
                             summary, sections)


def curate_steps_html(report: CurateReport) -> str:
    rows = [[s.name, ", ".join(f"{k}={v}" for k, v in s.settings.items()), s.inputs, s.kept, s.inputs - s.kept,
             ", ".join(f"{r}: {n}" for r, n in s.reasons.items())] for s in report.steps]
    warnings = "".join(f'<p class="td-warn">{_e(w)}</p>' for w in report.warnings)
    return _table(["step", "settings", "in", "out", "removed", "why"], rows) + warnings


def curate_examples_html(report: CurateReport) -> str:
    rows = [[s.name, e["reason"], e.get("run", ""), e["task_id"], e["id"][:12], e.get("detail") or "",
             f'<pre class="td-pre">{_e(e.get("snippet", ""))}</pre>']
            for s in report.steps for e in s.examples]
    if not rows:
        return _not_run("no step removed anything")
    escaped = [[_e(c) for c in r[:-1]] + [r[-1]] for r in rows]
    return _table(["step", "reason", "run", "task", "trajectory", "detail", "assistant text (start)"], escaped,
                  raw=True)


def curate_lengths_html(report: CurateReport, plot: Path | None) -> str:
    lengths = report.lengths
    before, after = lengths.get("before", {}), lengths.get("after", {})
    rows = []
    for cat in sorted(set(before) | set(after)):
        b, a = before.get(cat, {}), after.get(cat, {})
        rows.append([cat, *(f"{b.get(k, '–')} → {a.get(k, '–')}" for k in ("n", "mean", "median", "p90", "max"))])
    caption = f'<p class="td-caption">{_e(lengths.get("unit", ""))}, before → after</p>' if rows else ""
    image = _image(plot, "reasoning length per category, before and after") if plot else ""
    return caption + _table(["category", "trajectories", "mean", "median", "p90", "max"], rows) + image


GATE_REPORT_FILE = "gate.html"


def build_gate_report(out_dir: str | Path, report: GateReport) -> Path:
    """Write `out_dir/gate.html`: the decision and its reasons, agreement, calibration, behaviour, drift."""
    out = Path(out_dir)
    verdict = {"decision": report.decision, "student success": report.student_success,
               "teacher success": report.teacher_success, "tasks": report.agreement.tasks}
    sections = [("gate-decision", "Decision", gate_decision_html(report)),
                ("gate-agreement", "Agreement (shadow mode)", gate_agreement_html(report)),
                ("gate-calibration", "Calibration", gate_calibration_html(report, out)),
                ("gate-behaviour", "Behaviour", gate_behaviour_html(report, out)),
                ("gate-drift", "Drift against the baseline", gate_drift_html(report))]
    return write_report_page(out / GATE_REPORT_FILE, "trajdistill gate", f"gate: {report.student} vs {report.teacher}",
                             verdict, sections)


def gate_decision_html(r: GateReport) -> str:
    items = "".join(f"<li>{_e(x)}</li>" for x in r.reasons) or "<li>every check passed</li>"
    notes = "".join(f"<li>{_e(x)}</li>" for x in r.notes)
    return (f'<p class="td-caption">{_e(r.env)} / {_e(r.split)}: <b>{_e(r.decision)}</b></p><ul>{items}</ul>'
            + (f'<p class="td-caption">not measured</p><ul>{notes}</ul>' if notes else ""))


def gate_agreement_html(r: GateReport) -> str:
    a = r.agreement
    wrong = "–" if a.student_wrong_on_disagreement is None else f"{a.student_wrong_on_disagreement:.1%}"
    return _table(["tasks", "same final answer", "same tool calls", "disagreements", "student wrong on them",
                   "threshold"], [[a.tasks, f"{a.final_answer:.1%}", f"{a.actions:.1%}", a.disagreements, wrong,
                                   f"{r.thresholds['max_wrong_on_disagreement']:.0%}"]])


def gate_calibration_html(r: GateReport, out: Path) -> str:
    c = r.calibration
    if not c.measured:
        return _not_run(c.why_not or NOT_RUN)
    rows = [[f"{b['lo']:.1f}–{b['hi']:.1f}", int(b["n"]), f"{b['confidence']:.3f}", f"{b['accuracy']:.3f}"]
            for b in c.bins]
    return (f'<p class="td-caption">ECE {c.ece:.2%} over {c.episodes} answered episodes (target below '
            f'{r.thresholds["max_ece"]:.0%})</p>' + _table(["confidence bin", "episodes", "mean confidence",
                                                            "accuracy"], rows)
            + _image(out / "reliability.png", "reliability diagram"))


def gate_behaviour_html(r: GateReport, out: Path) -> str:
    b = r.behaviour
    rows = [[who, *(f"{d.get(k, 0):.0f}" for k in ("p10", "p50", "p90", "mean")), "–" if e is None else f"{e:.3f}"]
            for who, d, e in (("student", b.student_length, b.student_entropy),
                              ("teacher", b.teacher_length, b.teacher_entropy))]
    return (_table(["agent", "length p10", "p50", "p90", "mean", "token entropy (nats)"], rows)
            + _image(out / "lengths.png", "characters written per episode"))


def gate_drift_html(r: GateReport) -> str:
    d = r.drift
    if d is None:
        return _not_run("no --baseline given")
    rows = [[name, f"{d.psi[name]:.3f}", f"{d.ks.get(name, 0):.3f}"] for name in d.psi]
    acc = ("–" if d.accuracy_now is None else f"{d.accuracy_then:.1%} → {d.accuracy_now:.1%} on "
           f"{d.shared_tasks} shared tasks")
    return (f'<p class="td-caption">baseline {_e(d.baseline)}; accuracy {_e(acc)}</p>'
            + _table(["signal", "PSI", "KS"], rows))


def summary_html(summary: Mapping[str, Any]) -> str:
    """Top-level numbers and strings as cards; each nested mapping (a stage) as a card with its numbers."""
    if not summary:
        return _not_run("no summary")
    cards, stages = [], []
    for key, value in summary.items():
        if isinstance(value, Mapping):
            rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in value.items())
            stages.append(f'<div class="td-card td-stage"><h3>{_e(key)}</h3><table>{rows}</table></div>')
        elif not isinstance(value, (list, tuple)):
            cards.append(f'<div class="td-card td-stat"><div class="td-num">{_e(_fmt(value))}</div>'
                         f'<div class="td-label">{_e(key)}</div></div>')
    return f'<div class="td-cards">{"".join(cards)}</div><div class="td-stages">{"".join(stages)}</div>'


def eval_section(path: str | Path | None) -> str:
    results_path = _file_in(path, "results.json")
    if results_path is None:
        return _not_run()
    results = EvalResults.read(results_path)
    head = ["agent", "success", "errored", "95% CI", "n", "steps", "invalid", "tokens/ep"]
    rows = []
    for a in results.agents:
        lo, hi = a.ci95
        rows.append([a.spec, f"{a.success_rate:.1%}", a.errors, f"{lo:.0%} – {hi:.0%}", a.n, f"{a.mean_steps:.2f}",
                     f"{a.invalid_action_rate:.1%}", f"{a.tokens_per_episode:.0f}"])
    caption = f"{results.env} / {results.split}: {results.tasks} tasks, the same for every agent"
    parts = [f'<p class="td-caption">{_e(caption)}</p>', _table(head, rows, first_col_class="td-agent")]
    parts.append(_category_table(results.agents))
    parts.append(_image(results_path.parent / "success.png", "success rate per agent"))
    return "".join(parts)


def _category_table(agents: list[AgentResult]) -> str:
    cats = sorted({c for a in agents for c in a.by_category})
    if not cats:
        return ""
    rows = [[a.spec] + [_rate(a.by_category.get(c)) for c in cats] for a in agents]
    return "<h3>Success by category</h3>" + _table(["agent", *cats], rows, first_col_class="td-agent")


def _rate(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "–"
    rate = entry.get("success_rate", entry.get("rate"))
    n = entry.get("n")
    text = f"{rate:.0%}" if isinstance(rate, (int, float)) else "?"
    return f"{text} (n={n})" if n is not None else text


def training_section(train_dir: str | Path | None) -> str:
    if train_dir is None or not Path(train_dir).is_dir():
        return _not_run()
    train_dir = Path(train_dir)
    history = _log_history(train_dir)
    curriculum = _read_json(train_dir / "curriculum.json") or {}
    parts = []
    if curriculum:
        sizes = curriculum.get("stage_sizes") or []
        steps = curriculum.get("stage_steps") or []
        parts.append(f'<p class="td-caption">curriculum <code>{_e(curriculum.get("mode", "?"))}</code>: '
                     f'{_e(curriculum.get("examples", "?"))} examples in {len(sizes) or 1} stage(s) of '
                     f'{_e(sizes)} examples, starting at optimizer steps {_e(steps)}</p>')
    loss_png = train_dir / "loss.png"
    if loss_png.is_file():
        parts.append(_image(loss_png, "per-span loss curves with the curriculum stages marked"))
    elif history:
        parts.append(_drawn_losses(history, curriculum.get("stage_steps") or []))
    final = final_losses(history)
    if final:
        parts.append("<h3>Final losses</h3>" + _table(["loss", "value"], [[k, f"{v:.4f}"] for k, v in final.items()]))
    return "".join(parts) or _not_run("no loss curves or trainer state in " + str(train_dir))


def _log_history(train_dir: Path) -> list[dict[str, Any]]:
    """log_history of trainer_state.json: the train dir's own, else its last checkpoint's."""
    candidates = [train_dir / "trainer_state.json"]
    candidates += sorted(train_dir.glob("checkpoint-*/trainer_state.json"),
                         key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit()
                         else -1, reverse=True)
    for path in candidates:
        state = _read_json(path)
        if state and isinstance(state.get("log_history"), list):
            return state["log_history"]
    return []


def _drawn_losses(history: list[dict[str, Any]], stage_steps: list[int]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "loss.png"
        plot_losses(history, stage_steps, png)
        return _image(png, "per-span loss curves with the curriculum stages marked")


def compose_section(path: str | Path | None) -> str:
    report_path = _file_in(path, "compose_report.json")
    if report_path is None:
        return _not_run()
    report = ComposeReport.read(report_path)
    teachers = report.teachers
    parts = [f'<p class="td-caption">strategy <code>{_e(report.strategy)}</code> over '
             f'{_e(", ".join(report.runs))} (teachers: {_e(", ".join(teachers))})</p>']
    head = ["group", "tasks", "kept", "composed", "dropped", *(f"won by {t}" for t in teachers)]

    def row(name: str, g: GroupStats) -> list[Any]:
        return [name, g.tasks, g.kept, g.composed, g.dropped, *(g.won.get(t, 0) for t in teachers)]

    rows = [row("all tasks", report.total)]
    rows += [row(f"category {k}", g) for k, g in sorted(report.by_category.items())]
    rows += [row(f"difficulty {k}", g) for k, g in sorted(report.by_difficulty.items())]
    parts.append(_table(head, rows))
    if report.transitions:
        parts.append("<h3>Switches from a failed teacher to a successful one</h3>"
                     + _table(["failed → successful", "tasks"], sorted(report.transitions.items())))
    return "".join(parts)


def box_section(box_dir: str | Path | None) -> str:
    if box_dir is None or not Path(box_dir).is_dir():
        return _not_run()
    try:
        box = SkillBox.load(box_dir)
    except BoxError as e:  # the report still shows everything else
        return _not_run(f"the box does not load: {e}")
    parts = [f'<p class="td-caption">box <code>{_e(box.name)}</code> v{_e(box.version)} for env '
             f'<code>{_e(box.env)}</code>: {len(box.skills)} skill(s), {len(box.tools)} tool(s)</p>',
             _validation_html(box.validation)]
    if box.skills:
        items = "".join(f'<details class="td-skill"><summary><b>{_e(s.name)}</b>: {_e(s.description)}</summary>'
                        f'<pre class="td-pre">{_e(s.body)}</pre></details>' for s in box.skills)
        parts.append(f"<h3>Skills</h3>{items}")
    if box.tools:
        rows = [[f"<code>{_e(t.signature)}</code>", _e(t.spec.description), len(box.tests.get(t.name, []))]
                for t in box.tools]
        parts.append("<h3>Tools</h3>" + _table(["signature", "description", "tests"], rows, raw=True))
    return "".join(parts)


def _validation_html(validation: Mapping[str, Any]) -> str:
    dev = validation.get(VALIDATION_SECTION) or validation.get("gate")  # "gate": boxes validated before the rename
    check = validation.get("self_check")
    parts = []
    if dev:
        lo, hi = dev.get("delta_ci95", [0.0, 0.0])
        verdict = str(dev.get("verdict", ""))
        cls = "td-good" if dev.get("delta", 0) > 0 else "td-bad" if dev.get("flagged") else ""
        w, wo = dev.get("with", {}), dev.get("without", {})
        parts.append(
            f'<div class="td-cards"><div class="td-card td-stat {cls}"><div class="td-num">'
            f'{dev.get("delta", 0):+.1%}</div><div class="td-label">validation delta (95% CI {lo:+.0%} … {hi:+.0%})'
            f'<br>{_e(verdict)}</div></div>'
            f'<div class="td-card td-stat"><div class="td-num">{wo.get("success_rate", 0):.0%} → '
            f'{w.get("success_rate", 0):.0%}</div><div class="td-label">{_e(dev.get("agent", "?"))} on '
            f'{_e(dev.get("tasks", "?"))} {_e(dev.get("split", ""))} tasks, without → with the box'
            '</div></div></div>')
        if dev.get("note"):
            parts.append(f'<p class="td-warn">{_e(dev["note"])}</p>')
        ablation = dev.get("ablation") or {}
        if ablation:
            rows = [[k, f"{v.get('success_rate', 0):.0%}", f"{v.get('delta', 0):+.1%}", v.get("verdict", ""),
                     "yes" if v.get("flagged") else ""] for k, v in ablation.items()]
            parts.append("<h3>Ablation: the box without one item</h3>"
                         + _table(["without", "success", "delta vs full box", "verdict", "flagged"], rows))
    else:
        parts.append(_not_run("box validation not run"))
    if check:
        tools = check.get("tools", {})
        passed = sum(t.get("passed", 0) for t in tools.values())
        failed = sum(t.get("failed", 0) for t in tools.values())
        parts.append(f'<p class="td-caption">self-check: {"ok" if check.get("ok") else "FAILED"}, tool tests '
                     f'{passed} passed, {failed} failed (sandbox {_e(check.get("sandbox"))})</p>')
    return "".join(parts)


def viewer_section(runs: Mapping[str, str | Path] | None) -> str:
    present = {k: Path(v) for k, v in (runs or {}).items() if (Path(v) / RUN_FILE).exists()}
    if not present:
        return _not_run()
    try:
        return _legend() + viewer_fragment(present)
    except RunError as e:  # runs with no trajectories yet: the rest of the report still renders
        return _not_run(str(e))


# ---- HTML helpers -------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value, default=str)
    return str(value)


def _not_run(why: str = NOT_RUN) -> str:
    return f'<p class="td-notrun">{_e(why)}</p>'


def _file_in(path: str | Path | None, name: str) -> Path | None:
    """`path` when it is the file, `path/name` when it is a dir holding it, else None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        path = path / name
    return path if path.is_file() else None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file that has no typed reader (curriculum.json, trainer_state.json); None when it is absent."""
    return read_result(path, dict, "a JSON object") if path.is_file() else None


NUMERIC = re.compile(r"^[-+]?[\d.,]+%?( [–-] [-+]?[\d.,]+%?)?( \(n=\d+\))?$")


def _table(head: list[str], rows: list[list[Any]], *, raw: bool = False, first_col_class: str = "") -> str:
    """A table with numbers right-aligned; `raw` cells are HTML the caller already escaped."""
    def cell(j: int, v: Any) -> str:
        classes = [first_col_class] if j == 0 and first_col_class else []
        if isinstance(v, (int, float)) or NUMERIC.match(str(v)):
            classes.append("td-n")
        attr = f' class="{" ".join(classes)}"' if classes else ""
        return f"<td{attr}>{v if raw else _e(_fmt(v))}</td>"

    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(j, v) for j, v in enumerate(r)) + "</tr>" for r in rows)
    return (f'<div class="td-tablewrap"><table class="td-table"><thead><tr>{th}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img class="td-img" alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{_e(alt)}</figcaption></figure>')


def _legend() -> str:
    # chip-* classes, not span-*: a span-* element is always a span of a rendered trajectory
    items = "".join(f'<span class="span chip-{k}">{label}</span>' for k, label in
                    (("reason", "[REASON]"), ("act", "[ACT]"), ("answer", "[ANSWER]"), ("context", "context")))
    return (f'<div class="td-legend">spans: {items}<span class="td-obs-chip">observation</span></div>')


# ---- templates (templates/*.html.j2) and their CSS and JS (static/) ----------------------------------------

HERE = Path(__file__).parent
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                               keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
TEMPLATES.filters["h"] = lambda value: Markup(_e(value))  # html.escape, as every other part of the page


@functools.cache
def _static() -> dict[str, Markup]:
    """page_css, viewer_css and viewer_js: the page's inline style and script."""
    files = ("page.css", "viewer.css", "viewer.js")
    return {name.replace(".", "_"): Markup((HERE / "static" / name).read_text(encoding="utf-8")) for name in files}


def _page(template: str, **values: Any) -> str:
    """`template` rendered with the page's CSS and JS; HTML built here comes in as Markup."""
    return TEMPLATES.get_template(template).render(**_static(), **values)
