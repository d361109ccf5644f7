"""The `datasets.Features` description of Trajectory v1, field for field.

Nested models become structs and lists become `List` of structs, so the parquet
export keeps `messages[i].tool_calls[j].function.arguments` addressable.
One column is not a struct: `teacher.sampling` holds a JSON string, because its
values are mixed (floats, ints, strings, lists such as `stop`) and its keys
differ per backend; a struct would either drop unknown keys or force one type.
`Trajectory.to_row()` / `Trajectory.from_row()` convert that one field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Features


def trajectory_features() -> "Features":
    """The Features of `Trajectory.to_row()` rows (datasets is imported here, not at package import)."""
    from datasets import Features, List, Value

    string, i64, f64 = Value("string"), Value("int64"), Value("float64")
    tool_call = {"id": string, "type": string, "function": {"name": string, "arguments": string}}
    message = {
        "role": string, "content": string, "reasoning": string,
        "tool_calls": List(tool_call), "tool_call_id": string, "name": string, "error_kind": string,
    }
    span = {"message": i64, "start": i64, "end": i64, "kind": string, "field": string}
    return Features({
        "schema_version": i64,
        "id": string,
        "task_id": string,
        "split": string,
        "category": string,
        "difficulty": i64,
        "env": {"name": string, "version": string},
        "teacher": {"spec": string, "backend": string, "model": string, "sampling": string},
        "messages": List(message),
        "spans": List(span),
        "outcome": {"success": Value("bool"), "reward": f64, "final_answer": string, "detail": string,
                    "error": string},
        "usage": {"prompt_tokens": i64, "completion_tokens": i64, "total_tokens": i64, "latency_s": f64,
                  "wall_s": f64, "steps": i64, "invalid_actions": i64},
        "provenance": {"sandbox": string, "package_version": string, "seed": i64,
                       "composed_from": List(string), "strategy": string, "skills": List(string)},
        "created_at": f64,
    })
