"""The skill box: a directory of SKILL.md documents and sandboxed tools, with a hashed manifest.

    BOX/
      skillbox.json                 manifest: format, name, version, env, provenance, sha256 of every file,
                                    validation results
      skills/<name>/SKILL.md        Agent Skills format: YAML frontmatter (name, description), then the body
      skills/<name>/references/*.md optional documents the body links to
      tools/<name>.py               one typed, documented function per file
      tests/<name>.jsonl            {"tool", "args", "expected", "task"} examples replayed from the source
                                    trajectories ("task": the source task's prompt, optional)

The manifest is signed (see _trust.py); loading with a `Trust` refuses a box that no trusted key
signed and no pinned digest matches. Box code is written by a model, so it never runs in this
process. Schemas come from parsing the source with `ast` (annotations are read from a whitelist
of types, never evaluated); the code itself runs only through `run_source` or `run_installed`, inside a
sandbox.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import json
import marshal
import os
import re
import shutil
import stat
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trajdistill.envs import ToolSchemaError, ToolSpec, TrajdistillError, tool_spec

from ._trust import SIGNATURE, SIGNED_SECTIONS, Trust, Verdict, check_trust, local_key, manifest_digest, sign_manifest

FORMAT_VERSION = 1
MANIFEST = "skillbox.json"
SKILL_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # the Agent Skills rule for names
TOOL_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_DESCRIPTION = 1024
REFERENCE_LINK = re.compile(r"\]\((references/[^)\s]+)\)")


class BoxError(TrajdistillError, ValueError):
    """A box is missing a file, was tampered with, holds an extra file, or does not parse."""


# --------------------------------------------------------------------------- what a box holds


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    body: str
    path: Path  # the SKILL.md file
    references: tuple[str, ...] = ()  # box-relative paths of the linked reference documents

    @property
    def text(self) -> str:
        """The whole SKILL.md, frontmatter included."""
        return render_skill(self.name, self.description, self.body)


@dataclass(frozen=True)
class BoxTool:
    name: str
    spec: ToolSpec
    source: str
    path: Path

    @property
    def signature(self) -> str:
        return self.spec.signature()


@dataclass(frozen=True)
class ToolTest:
    tool: str
    args: dict[str, Any]
    expected: Any
    task: str = ""  # the prompt of the source task: tool retrieval matches new tasks against it


@dataclass
class SkillDraft:
    """A skill to write: its SKILL.md parts, reference documents and source trajectories."""

    name: str
    description: str
    body: str
    references: dict[str, str] = field(default_factory=dict)  # file name under references/ -> markdown
    sources: dict[str, list[str]] = field(default_factory=dict)  # run dir -> trajectory ids


@dataclass
class ToolDraft:
    """A tool to write: its source, test examples and source trajectories."""

    name: str
    source: str
    tests: list[dict[str, Any]] = field(default_factory=list)  # {"args", "expected", "task"}
    sources: dict[str, list[str]] = field(default_factory=dict)


def render_skill(name: str, description: str, body: str) -> str:
    front = yaml.safe_dump({"name": name, "description": description}, sort_keys=False, allow_unicode=True,
                           width=10_000)
    return f"---\n{front}---\n\n{body.strip()}\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the box


class SkillBox:
    """A loaded (and, by default, verified) skill box."""

    def __init__(self, path: Path, manifest: dict[str, Any], skills: list[Skill], tools: list[BoxTool],
                 tests: dict[str, list[ToolTest]]):
        self.path = path
        self.manifest = manifest
        self.skills = skills
        self.tools = tools
        self.tests = tests
        self.trust: Verdict | None = None  # set when loaded with a Trust

    @property
    def digest(self) -> str:
        """The manifest digest a `--trust sha256:...` pin names."""
        return manifest_digest(self.manifest)

    @property
    def signer(self) -> str | None:
        sig = self.manifest.get(SIGNATURE)
        return sig.get("key") if isinstance(sig, dict) else None

    name = property(lambda self: str(self.manifest["name"]))
    version = property(lambda self: str(self.manifest.get("version", "")))
    env = property(lambda self: self.manifest.get("env"))
    validation = property(lambda self: dict(self.manifest.get("validation") or {}))

    def skill(self, name: str) -> Skill:
        for s in self.skills:
            if s.name == name:
                return s
        raise KeyError(f"box {self.name!r} has no skill {name!r}; skills: {', '.join(s.name for s in self.skills)}")

    def tool(self, name: str) -> BoxTool:
        for t in self.tools:
            if t.name == name:
                return t
        raise KeyError(f"box {self.name!r} has no tool {name!r}; tools: {', '.join(t.name for t in self.tools)}")

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True, trust: Trust | None = None) -> "SkillBox":
        """Read a box. With `verify`, every file must match its manifest hash and no file, directory or
        FIFO may be extra. With `trust`, the manifest must also be signed by a trusted key or pinned.

        Raises BoxError with one line naming the file that is missing, tampered, extra or unparsable,
        or saying how to trust the box.
        """
        path = Path(path)
        manifest = _read_manifest(path)
        verdict = None
        if trust is not None:
            try:
                verdict = check_trust(path, manifest, trust)
            except ValueError as e:
                raise BoxError(str(e)) from None
        files = _read_files(path, manifest, verify or trust is not None)  # trust rests on the hashes
        skills = [_load_skill(path, name, entry, files) for name, entry in sorted(manifest["skills"].items())]
        tools = [_load_tool(path, name, entry, files) for name, entry in sorted(manifest["tools"].items())]
        tests = {t.name: _load_tests(path, t.name, manifest["tools"][t.name], files) for t in tools}
        box = cls(path, manifest, skills, tools, tests)
        box.trust = verdict
        return box

    @classmethod
    def write(cls, path: str | Path, *, name: str, env: str | None, skills: list[SkillDraft] = (),
              tools: list[ToolDraft] = (), sources: list[dict[str, Any]] = (), version: str = "0.1.0",
              generator: dict[str, Any] | None = None, overwrite: bool = False, sign: bool = True,
              key: Any = None) -> "SkillBox":
        """Write a new box (files, then the manifest with their hashes) and load it back verified.

        The box is built in a temporary sibling directory and renamed into place, so a crash never
        leaves half a box. An existing box at `path` is replaced only with `overwrite`. With `sign`,
        the manifest is signed by `key` (an Ed25519 private key), by default this machine's key.
        """
        path = Path(path)
        _check_target(path, overwrite)
        files = _render_files(skills, tools)
        manifest = {
            "format_version": FORMAT_VERSION, "name": name, "version": version, "env": env,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "generator": generator or {}, "sources": list(sources),
            "skills": {s.name: {"path": f"skills/{s.name}/SKILL.md", "description": s.description,
                                "references": [f"skills/{s.name}/references/{r}" for r in sorted(s.references)],
                                "sources": s.sources} for s in skills},
            "tools": {t.name: {"path": f"tools/{t.name}.py", "tests": f"tests/{t.name}.jsonl",
                               "sources": t.sources} for t in tools},
            "files": {rel: sha256(data) for rel, data in sorted(files.items())},
            "validation": {},
        }
        if sign:
            manifest[SIGNATURE] = sign_manifest(manifest, key or local_key())
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        cls.load(tmp)  # refuse to publish a box that does not load
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return cls.load(path)

    def record_validation(self, section: str, data: Any) -> None:
        """Set `validation.<section>` and rewrite the manifest atomically (it is not in its own hash list).

        A section the signature covers makes the signature stale: it is dropped, and `sign` makes a new one.
        """
        self.manifest.setdefault("validation", {})[section] = json.loads(json.dumps(data, default=str))
        if section in SIGNED_SECTIONS:
            self.manifest.pop(SIGNATURE, None)
        _atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")

    def sign(self, key: Any = None) -> str:
        """Sign the manifest with `key` (default: this machine's key); returns the signer's key id."""
        self.manifest[SIGNATURE] = sign_manifest(self.manifest, key or local_key())
        _atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")
        return self.manifest[SIGNATURE]["key"]

    def sources_of(self, kind: Literal["skills", "tools"], name: str) -> dict[str, list[str]]:
        """Run dir -> trajectory ids that a skill or tool came from."""
        return dict(self.manifest[kind][name].get("sources") or {})


# --------------------------------------------------------------------------- writing


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise BoxError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MANIFEST).exists():
            raise BoxError(f"{path} is not empty and is not a skill box; choose a new --out")
        if not overwrite:
            raise BoxError(f"{path} already holds a skill box; pass --force to replace it")


def _render_files(skills: list[SkillDraft], tools: list[ToolDraft]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for s in skills:
        if not SKILL_NAME.match(s.name):
            raise BoxError(f"skill name {s.name!r} must be lowercase letters, digits and single hyphens")
        files[f"skills/{s.name}/SKILL.md"] = render_skill(s.name, s.description, s.body).encode()
        for ref, text in s.references.items():
            if not re.fullmatch(r"[\w.-]+\.md", ref):
                raise BoxError(f"skill {s.name!r}: reference {ref!r} must be a plain .md file name")
            files[f"skills/{s.name}/references/{ref}"] = text.encode()
    for t in tools:
        if not TOOL_NAME.match(t.name):
            raise BoxError(f"tool name {t.name!r} must be a lowercase Python identifier")
        files[f"tools/{t.name}.py"] = t.source.encode()
        lines = [json.dumps({"tool": t.name, "args": c["args"], "expected": c["expected"],
                             **({"task": c["task"]} if c.get("task") else {})}) for c in t.tests]
        files[f"tests/{t.name}.jsonl"] = "".join(line + "\n" for line in lines).encode()
    return files


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- loading


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise BoxError(f"skill box {path} does not exist or is not a directory")
    mpath = path / MANIFEST
    if not mpath.exists() and not mpath.is_symlink():
        raise BoxError(f"{path} is not a skill box: {MANIFEST} is missing")
    if not stat.S_ISREG(mpath.lstat().st_mode):  # a FIFO would block the read
        raise BoxError(f"{mpath} is not a regular file")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BoxError(f"{mpath} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BoxError(f"{mpath} must hold a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BoxError(f"{mpath}: format_version {manifest.get('format_version')!r} is not supported "
                       f"(this trajdistill reads {FORMAT_VERSION})")
    for key, kind in (("name", str), ("files", dict), ("skills", dict), ("tools", dict)):
        if not isinstance(manifest.get(key), kind):
            raise BoxError(f"{mpath}: {key!r} is missing or not a {kind.__name__}")
    for rel in manifest["files"]:
        if not _safe_rel(rel):
            raise BoxError(f"{mpath}: file path {rel!r} must be relative and stay inside the box")
    return manifest


def _safe_rel(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and rel != MANIFEST


def _read_files(path: Path, manifest: dict[str, Any], verify: bool) -> dict[str, bytes]:
    """Every listed file's bytes, read once: what is parsed is exactly what was hashed."""
    listed: dict[str, str] = manifest["files"]
    out: dict[str, bytes] = {}
    for rel, digest in sorted(listed.items()):
        f = path / rel
        if not f.is_file() or f.is_symlink():
            raise BoxError(f"skill box {path}: file {rel} is missing (or is not a regular file)")
        data = f.read_bytes()
        if verify and sha256(data) != digest:
            raise BoxError(f"skill box {path}: file {rel} was tampered with (sha256 does not match the manifest)")
        out[rel] = data
    if verify:
        _refuse_extras(path, set(listed))
    return out


def _refuse_extras(path: Path, listed: set[str]) -> None:
    """Anything on disk the manifest does not account for: a file, a FIFO, a link or a directory."""
    dirs = {p.as_posix() for rel in listed for p in Path(rel).parents if p != Path(".")}
    for root, subdirs, names in os.walk(path):
        for name in sorted(subdirs + names):
            full = Path(root) / name
            rel = full.relative_to(path).as_posix()
            if full.is_dir() and not full.is_symlink():
                if rel not in dirs:
                    raise BoxError(f"skill box {path}: extra directory {rel} is not in the manifest")
            elif rel != MANIFEST and rel not in listed:
                raise BoxError(f"skill box {path}: extra file {rel} is not in the manifest")


def _listed(path: Path, files: dict[str, bytes], rel: str, what: str) -> bytes:
    if rel not in files:
        raise BoxError(f"skill box {path}: {what} file {rel} is not in the manifest's file list")
    return files[rel]


def _text(path: Path, rel: str, data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise BoxError(f"skill box {path}: file {rel} is not UTF-8 text") from None


def parse_skill_md(text: str) -> tuple[dict[str, Any], str]:
    """(frontmatter, body) of a SKILL.md; ValueError when the frontmatter is missing or not YAML."""
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n?(.*)$", text, re.DOTALL)
    if not m:
        raise ValueError("it does not start with YAML frontmatter between --- lines")
    try:
        front = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise ValueError(f"its frontmatter is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(front, dict):
        raise ValueError("its frontmatter must be a mapping")
    return front, m.group(2)


def _load_skill(path: Path, name: str, entry: dict[str, Any], files: dict[str, bytes]) -> Skill:
    rel = f"skills/{name}/SKILL.md"
    if entry.get("path") != rel:
        raise BoxError(f"skill box {path}: skill {name!r} must live at {rel}")
    text = _text(path, rel, _listed(path, files, rel, "skill"))
    try:
        front, body = parse_skill_md(text)
    except ValueError as e:
        raise BoxError(f"skill box {path}: file {rel} does not parse: {e}") from None
    desc = front.get("description")
    if front.get("name") != name:
        raise BoxError(f"skill box {path}: file {rel}: frontmatter name {front.get('name')!r} must be {name!r}")
    if not isinstance(desc, str) or not desc.strip() or len(desc) > MAX_DESCRIPTION:
        raise BoxError(f"skill box {path}: file {rel}: description must be 1-{MAX_DESCRIPTION} characters of text")
    refs = []
    for link in REFERENCE_LINK.findall(body):
        ref = f"skills/{name}/{link}"
        _listed(path, files, ref, "reference")
        refs.append(ref)
    return Skill(name, desc.strip(), body.strip(), path / rel, tuple(refs))


def _load_tool(path: Path, name: str, entry: dict[str, Any], files: dict[str, bytes]) -> BoxTool:
    rel = f"tools/{name}.py"
    if entry.get("path") != rel or not TOOL_NAME.match(name):
        raise BoxError(f"skill box {path}: tool {name!r} must be a Python identifier living at {rel}")
    source = _text(path, rel, _listed(path, files, rel, "tool"))
    try:
        spec = spec_from_source(source, name)
    except (SyntaxError, ValueError, ToolSchemaError) as e:
        raise BoxError(f"skill box {path}: file {rel} does not parse as a tool: {_one_line(e)}") from None
    return BoxTool(name, spec, source, path / rel)


def _load_tests(path: Path, name: str, entry: dict[str, Any], files: dict[str, bytes]) -> list[ToolTest]:
    rel = f"tests/{name}.jsonl"
    if entry.get("tests") != rel:
        raise BoxError(f"skill box {path}: tool {name!r} must keep its tests at {rel}")
    out = []
    for lineno, line in enumerate(_text(path, rel, _listed(path, files, rel, "test")).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BoxError(f"skill box {path}: file {rel} line {lineno} is not JSON ({e})") from None
        if not isinstance(rec, dict) or rec.get("tool") != name or not isinstance(rec.get("args"), dict) \
                or "expected" not in rec:
            raise BoxError(f"skill box {path}: file {rel} line {lineno} must be "
                           f'{{"tool": "{name}", "args": {{...}}, "expected": ...}}')
        out.append(ToolTest(name, rec["args"], rec["expected"], str(rec.get("task") or "")))
    return out


def _one_line(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"syntax error on line {e.lineno}: {e.msg}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# --------------------------------------------------------------------------- schemas without running code

_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None),
                          "list": list, "dict": dict, "tuple": tuple, "Any": Any}
_GENERICS: dict[str, Any] = {"list": list, "List": list, "dict": dict, "Dict": dict, "tuple": tuple,
                             "Tuple": tuple, "set": set}


def annotation_type(node: ast.expr | None) -> Any:
    """The type an annotation names, from a whitelist; ValueError for anything else. Nothing is evaluated."""
    if node is None:
        raise ValueError("a parameter has no type hint")
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        return annotation_type(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "typing":
        return annotation_type(ast.Name(node.attr))
    if isinstance(node, ast.Name):
        if node.id not in _TYPES:
            raise ValueError(f"type hint {node.id!r} is not one of {', '.join(_TYPES)}")
        return _TYPES[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[annotation_type(node.left), annotation_type(node.right)]
    if isinstance(node, ast.Subscript):
        return _subscript_type(node)
    raise ValueError(f"type hint {ast.unparse(node)!r} is not supported in a skill-box tool")


def _subscript_type(node: ast.Subscript) -> Any:
    base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
    items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    if base == "Literal":
        return Literal[tuple(ast.literal_eval(i) for i in items)]  # type: ignore[misc]
    if base == "Optional":
        return typing.Optional[annotation_type(items[0])]
    if base == "Union":
        return typing.Union[tuple(annotation_type(i) for i in items)]
    if base in _GENERICS:
        args = tuple(annotation_type(i) for i in items if not (isinstance(i, ast.Constant) and i.value is ...))
        return _GENERICS[base][args if len(args) > 1 else args[0]]
    raise ValueError(f"type hint {ast.unparse(node)!r} is not supported in a skill-box tool")


def function_def(source: str, name: str) -> ast.FunctionDef:
    """The tool's top-level function; ValueError when it is missing or the module does more than define."""
    tree = ast.parse(source)
    found = None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            found = node
        elif not isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)) and not _is_docstring(node):
            raise ValueError(f"line {node.lineno}: a tool module may only import and define functions")
    if found is None:
        raise ValueError(f"it defines no top-level function named {name!r}")
    if found.decorator_list:
        raise ValueError(f"function {name!r} must not be decorated")
    return found


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def spec_from_source(source: str, name: str) -> ToolSpec:
    """The ToolSpec of function `name` in `source`, built by the one schema builder from a stub.

    The stub carries the parsed signature, annotations and docstring; the tool's code is never executed.
    """
    fn = function_def(source, name)
    a = fn.args
    if a.vararg or a.kwarg or a.posonlyargs:
        raise ValueError(f"function {name!r} must take named parameters only (no *args, **kwargs or /)")
    params, hints = [], {}
    defaults = [None] * (len(a.args) - len(a.defaults)) + list(a.defaults)
    for arg, default, kind in ([(x, d, inspect.Parameter.POSITIONAL_OR_KEYWORD) for x, d in zip(a.args, defaults)]
                               + [(x, d, inspect.Parameter.KEYWORD_ONLY) for x, d in zip(a.kwonlyargs, a.kw_defaults)]):
        hints[arg.arg] = annotation_type(arg.annotation)
        value = inspect.Parameter.empty if default is None else _literal_default(name, arg.arg, default)
        params.append(inspect.Parameter(arg.arg, kind, default=value, annotation=hints[arg.arg]))

    def stub() -> None:
        return None

    stub.__name__ = name
    stub.__doc__ = ast.get_docstring(fn)
    stub.__annotations__ = hints
    stub.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return tool_spec(stub, name=name)


def _literal_default(fn: str, arg: str, node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"function {fn!r}: the default of {arg!r} must be a literal") from None


# --------------------------------------------------------------------------- running tools in a sandbox

RESULT_MARK = "\x1e__trajdistill_tool_result__"
ARGV_MAX = 100_000  # hex characters of arguments passed in argv (Linux caps one at 128 KiB); more go on stdin
# Runs inside the sandbox: load the tool file, call the function with the arguments, print the result as JSON.
# argv: PATH NAME one|many [HEX]. The arguments are marshalled by this process (trusted data), as hex in argv or
# raw on stdin; with `many`, a list of argument objects: one result line per call, in order, each call on a fresh
# load of the file (as if it ran alone), all in one process (one sandbox exec). It imports neither json (with re
# and enum, about a third of a warm exec) nor importlib: marshal is built in and `_json` is json's own C encoder.
DRIVER = r"""
import marshal, sys
MARK = "\x1e__trajdistill_tool_result__"
def refuse(o):
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
try:
    import _json
    def dumps(value):
        encode = _json.make_encoder({}, refuse, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)
        return "".join(encode(value, 0))
    dumps(0)
except Exception:
    from json import dumps
def call(path, name, args):
    try:
        out, sys.stdout = sys.stdout, sys.stderr
        try:
            mod = type(sys)("skilltool")
            mod.__file__ = path
            with open(path, "rb") as f:
                exec(compile(f.read(), path, "exec"), mod.__dict__)
            value = getattr(mod, name)(**args)
        finally:
            sys.stdout = out
        text = str(value)
        try:
            return dumps({"ok": True, "value": value, "text": text})
        except (TypeError, ValueError):
            return dumps({"ok": True, "value": text, "text": text})
    except BaseException as e:
        return dumps({"ok": False, "error": type(e).__name__ + ": " + str(e)})
def main():
    path, name, mode = sys.argv[1:4]
    given = marshal.loads(bytes.fromhex(sys.argv[4]) if len(sys.argv) > 4 else sys.stdin.buffer.read())
    for args in (given if mode == "many" else [given]):
        sys.stdout.write(MARK + call(path, name, args) + "\n")
        sys.stdout.flush()
main()
"""


@dataclass
class ToolResult:
    ok: bool
    value: Any = None  # the JSON value the function returned
    text: str = ""  # str(value), as print() would have shown it
    error: str = ""


async def run_source(source: str, function: str, args: dict[str, Any], sandbox: Any, *,
                     timeout: float | None = None) -> ToolResult:
    """Run `function` from tool `source` with `args` inside `sandbox`: the one place tool code executes
    (with `run_installed`, for a file already in the sandbox).

    Every failure of the tool (exception, timeout, memory kill, garbage output) is a ToolResult with
    ok=False and a one-line error; only a broken sandbox backend raises.
    """
    path = await _write_tool(source, function, sandbox)
    res = await _exec_driver(sandbox, path, function, args, timeout)
    return _one_result(res, function, timeout or sandbox.limits.timeout_s)


async def run_installed(path: str, function: str, args: dict[str, Any], sandbox: Any, *,
                        timeout: float | None = None) -> ToolResult:
    """`run_source` for a tool file that `Sandbox.install` put at `path`, in an exec that sees nothing of the
    execs before it (`Sandbox.exec_fresh`)."""
    res = await _exec_driver(sandbox, path, function, args, timeout, fresh=True)
    return _one_result(res, function, timeout or sandbox.limits.timeout_s)


async def run_source_many(source: str, function: str, calls: list[dict[str, Any]], sandbox: Any, *,
                          timeout: float | None = None) -> list[ToolResult] | None:
    """`run_source` for many argument sets in one sandbox exec (each on a fresh load of the tool).
    None when the batch did not give one result per call (a timeout, a kill, a forged line): run them singly."""
    path = await _write_tool(source, function, sandbox)
    res = await _exec_driver(sandbox, path, function, calls, timeout, many=True)
    lines = _result_lines(res.stdout)
    if res.timed_out or res.killed or len(lines) != len(calls):
        return None
    return [_parsed(line, function) for line in lines]


async def _write_tool(source: str, function: str, sandbox: Any) -> str:
    path = f"skilltool_{function}.py"
    await sandbox.write_file(path, source)
    return path


async def _exec_driver(sandbox: Any, path: str, function: str, payload: Any, timeout: float | None, *,
                       many: bool = False, fresh: bool = False) -> Any:
    # -B: no .pyc beside the tool file; its mtime has 1 s resolution, so a rewrite of the same size within
    # that second (another tool of the same name) would run the stale bytecode
    argv = [sandbox.python, "-B", "-c", DRIVER, path, function, "many" if many else "one"]
    data = marshal.dumps(payload)
    stdin = None
    if 2 * len(data) <= ARGV_MAX:
        argv.append(data.hex())  # no stdin: on docker that is a file upload, one more engine round trip
    else:
        stdin = data
    run = sandbox.exec_fresh if fresh else sandbox.exec
    return await run(argv, stdin=stdin, timeout=timeout)


def _one_result(res: Any, function: str, timeout: float) -> ToolResult:
    lines = _result_lines(res.stdout)
    if res.timed_out or res.killed or not lines:
        return _failed(res, function, timeout)
    return _parsed(lines[-1], function)


def _result_lines(stdout: str) -> list[str]:
    # split on newlines only: str.splitlines() also splits at the \x1e in the marker
    return [line for line in stdout.split("\n") if line.startswith(RESULT_MARK)]


def _failed(res: Any, function: str, timeout: float) -> ToolResult:
    if res.timed_out:
        return ToolResult(False, error=f"tool {function} timed out after {timeout:g}s")
    if res.killed:
        return ToolResult(False, error=f"tool {function} was killed: out of memory or a resource limit")
    tail = (res.stderr.strip().splitlines() or [f"exit code {res.exit_code}"])[-1]
    return ToolResult(False, error=f"tool {function} failed: {tail[:500]}")


def _parsed(line: str, function: str) -> ToolResult:
    try:
        out = json.loads(line[len(RESULT_MARK):])
    except ValueError as e:
        return ToolResult(False, error=f"tool {function} gave an unreadable result ({e})")
    if not out.get("ok"):
        return ToolResult(False, error=str(out.get("error", "unknown error"))[:1000])
    return ToolResult(True, out.get("value"), str(out.get("text", "")))


async def run_tool_in_sandbox(box: SkillBox, tool_name: str, args: dict[str, Any], sandbox: Any, *,
                              timeout: float | None = None, installed: str | None = None) -> tuple[bool, Any]:
    """Call a box tool inside `sandbox`: (True, value) or (False, one-line error). Arguments are checked first.

    `installed`: the directory where `install_tools` put the box's tools in this sandbox; the call then runs
    in a fresh exec. Without it, the tool file is written into the working directory first.
    """
    try:
        tool = box.tool(tool_name)
    except KeyError as e:
        return False, str(e.args[0])
    problem = tool.spec.validate(args)
    if problem is not None:
        return False, problem
    if installed is None:
        res = await run_source(tool.source, tool.name, args, sandbox, timeout=timeout)
    else:
        res = await run_installed(f"{installed}/{tool_path(tool.name)}", tool.name, args, sandbox, timeout=timeout)
    return (True, res.value) if res.ok else (False, res.error)


def tool_path(name: str) -> str:
    return f"tools/{name}.py"


async def install_tools(box: SkillBox, sandbox: Any) -> str:
    """Install the box's tool files (exactly the verified sources) read-only in `sandbox`; returns their
    directory there, for `run_tool_in_sandbox(installed=...)`."""
    return await sandbox.install({tool_path(t.name): t.source for t in box.tools})


class ToolRunner:
    """Runs tool code in up to `workers` sandboxes of one provider at once, reusing them."""

    def __init__(self, provider: Any, workers: int = 2, timeout: float | None = None):
        self.provider = provider
        self.workers = max(1, workers)
        self.timeout = timeout
        self._free: asyncio.Queue = asyncio.Queue()
        self._made: list[Any] = []
        self._lock = asyncio.Lock()

    async def _take(self) -> Any:
        async with self._lock:
            if self._free.empty() and len(self._made) < self.workers:
                sb = await self.provider.create()
                self._made.append(sb)
                return sb
        return await self._free.get()

    async def run(self, source: str, function: str, args: dict[str, Any]) -> ToolResult:
        sb = await self._take()
        try:
            return await run_source(source, function, args, sb, timeout=self.timeout)
        finally:
            self._free.put_nowait(sb)

    async def run_many(self, source: str, function: str, calls: list[dict[str, Any]]) -> list[ToolResult]:
        """One result per argument set: one sandbox exec for all, or one each where the batch broke."""
        sb = await self._take()
        try:
            results = await run_source_many(source, function, calls, sb, timeout=self.timeout)
        finally:
            self._free.put_nowait(sb)
        if results is None:
            results = list(await asyncio.gather(*(self.run(source, function, args) for args in calls)))
        return results

    async def close(self) -> None:
        for sb in self._made:
            await self.provider.release(sb)
        self._made.clear()
