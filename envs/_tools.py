"""The one place where tool schemas are built.

Env tools, skill-box tools and the MCP server all describe a tool as a
`ToolSpec` built from a typed, documented Python function, so that the schema
an agent sees and the one an MCP client sees can never drift apart.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args, get_origin

import jsonschema


class ToolSchemaError(TypeError):
    """A function cannot be described as a tool (missing hint or docstring)."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool as agents and MCP see it: a name, a description and a JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai(self) -> dict[str, Any]:
        """The OpenAI `tools=[...]` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def signature(self) -> str:
        props = self.parameters.get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in props.items())
        return f"{self.name}({args})"

    def validate(self, arguments: Any) -> str | None:
        """Return None when `arguments` fit the schema, else a one-line reason."""
        if not isinstance(arguments, dict):
            return f"arguments for {self.name!r} must be a JSON object, got {type(arguments).__name__}"
        e = jsonschema.exceptions.best_match(_validator(json.dumps(self.parameters, sort_keys=True))
                                             .iter_errors(arguments))
        if e is None:
            return None
        where = "/".join(str(p) for p in e.absolute_path)
        return f"bad arguments for {self.name!r}{' at ' + where if where else ''}: {e.message}"


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Any:
    """A checked validator per schema: `jsonschema.validate` re-checks the schema on every call (~2 ms)."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


def json_type(hint: Any) -> dict[str, Any]:
    """JSON schema for a Python type hint."""
    if hint in _PRIMITIVES:
        return dict(_PRIMITIVES[hint])
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset):
        return {"type": "array", "items": json_type(args[0]) if args else {}}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if hint is list:
        return {"type": "array"}
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1 and len(args) == 2:
            return json_type(non_null[0])
        return {"anyOf": [json_type(a) for a in args]}
    raise ToolSchemaError(f"cannot express type {hint!r} in a tool schema")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (summary, {arg: description})."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("\nArgs:")
    args: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        if re.match(r"^\S", line):  # a new section such as Returns: ends Args
            break
        m = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if m:
            current = m.group(1)
            args[current] = m.group(2).strip()
        elif current and line.strip():
            args[current] += " " + line.strip()
    return head.strip(), args


def tool_spec(fn: Callable[..., Any], name: str | None = None) -> ToolSpec:
    """Build a ToolSpec from a function's signature, type hints and docstring.

    Parameters named `self` or starting with `_` are not part of the schema.
    """
    if not (fn.__doc__ or "").strip():
        raise ToolSchemaError(f"tool {fn.__name__!r} needs a docstring: it becomes the tool description")
    hints = typing.get_type_hints(fn)
    summary, arg_docs = parse_docstring(fn.__doc__ or "")
    props: dict[str, Any] = {}
    required: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self" or p.name.startswith("_"):
            continue
        if p.name not in hints:
            raise ToolSchemaError(f"tool {fn.__name__!r}: parameter {p.name!r} needs a type hint")
        schema = json_type(hints[p.name])
        if p.name in arg_docs:
            schema["description"] = arg_docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        else:
            schema["default"] = p.default
        props[p.name] = schema
    params: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        params["required"] = required
    return ToolSpec(name=name or fn.__name__, description=summary, parameters=params)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None):
    """Mark a method as an env tool. Use `@tool` or `@tool(name=...)`."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__tool_name__ = name or f.__name__  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark
