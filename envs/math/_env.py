"""The `math` env: its episode (a python tool) and the exact verifier of final answers."""

from __future__ import annotations

import hashlib
import re
from fractions import Fraction
from typing import Any, Callable

from .._env import Env, Episode, ToolError
from .._errors import ConfigError
from .._tools import tool
from .._types import Observation, Outcome, Task
from ._bank import SPLIT_SIZES, _bank
from ._kinds import CATEGORIES
from ._experts import coder, reasoner, slipping_coder, trusting_coder

MAX_OBS_LINES = 40
MAX_OBS_CHARS = 4000


_NUMBER_WITH_UNIT = re.compile(r"^(-?\d+(?:\.\d+)?(?:/\d+)?)\s*[A-Za-z][A-Za-z ]*$")


def parse_answer(text: str | None) -> Fraction | None:
    """Read a final answer as an exact number; None when it is not one.

    Accepts `1,234`, `1 234`, `42.0`, `x = 42`, `$42`, `\\boxed{42}`, `42 dollars`, `84/2`.
    """
    if text is None:
        return None
    s = text.strip()
    boxed = re.search(r"\\boxed\{([^{}]*)\}", s)
    if boxed:
        s = boxed.group(1)
    s = s.split("=")[-1]
    s = re.sub(r"[$*`\\()]|\\[()]", "", s).strip().rstrip(".").strip()
    s = re.sub(r"(?<=\d)[,_ ](?=\d{3}\b)", "", s)
    m = _NUMBER_WITH_UNIT.match(s)
    if m:
        s = m.group(1)
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value


def check_answer(expected: str, got: str | None) -> bool:
    value = parse_answer(got)
    return value is not None and value == Fraction(expected)


def _short(text: str) -> str:
    """Cap an observation: keep the head and the tail of long output."""
    lines = text.splitlines()
    if len(lines) > MAX_OBS_LINES:
        half = MAX_OBS_LINES // 2
        lines = lines[:half] + [f"[... {len(lines) - MAX_OBS_LINES} lines cut ...]"] + lines[-half:]
    out = "\n".join(lines)
    if len(out) > MAX_OBS_CHARS:
        half = MAX_OBS_CHARS // 2
        out = out[:half] + f"\n[... {len(out) - MAX_OBS_CHARS} characters cut ...]\n" + out[-half:]
    return out


class MathEpisode(Episode):
    @tool
    async def python(self, code: str) -> Observation:
        """Run a Python 3 program in a sandbox and return what it prints (stdout, then stderr).

        Args:
            code: The full program. Use print() for every value you want to see.
        """
        if self.sandbox is None:
            raise ToolError("no sandbox is attached to this episode, so code cannot run")
        result = await self.sandbox.exec_python(code)
        return Observation(_short(result.observation()), error_kind=result.error_kind)

    async def finish(self, answer: str | None) -> Outcome:
        expected = self.task.data["answer"]
        ok = check_answer(expected, answer)
        self.done = True
        self.outcome = Outcome(success=ok, reward=1.0 if ok else 0.0, final_answer=answer,
                               detail=f"expected {expected}, got {answer if answer is not None else 'no answer'}")
        return self.outcome


class MathEnv(Env):
    """Integer math problems in five categories and three levels; a python tool; exact verification."""

    name = "math"
    version = "1"
    episode_cls = MathEpisode
    needs_sandbox = True
    answer_tool = True

    def __init__(self, variant: str | None = None, categories: str | list[str] | None = None,
                 notation: str = "python", **params: Any):
        # as twx does: a key or variant nothing reads would be recorded in run.yaml as if it had an effect
        if variant:
            raise ConfigError(f"env math has no variant {variant!r}; use --env math")
        if params:
            raise ConfigError(f"env math has no parameter {', '.join(sorted(params))}; it accepts categories and "
                              "notation")
        if notation not in NOTATIONS:
            raise ConfigError(f"env math has no notation {notation!r}; notations: {', '.join(NOTATIONS)}")
        self.categories = _categories(categories)
        self.notation = notation
        super().__init__()

    def tasks(self, split: str, n: int | None = None, offset: int = 0) -> list[Task]:
        self.check_split(split)
        if offset < 0 or (n is not None and n < 0):
            raise ConfigError(f"n and offset must not be negative (got n={n}, offset={offset})")
        if self.categories:  # the split's tasks of these categories, in bank order (ids unchanged)
            pool = [t for t in _bank().get(split, SPLIT_SIZES[split]) if t.category in self.categories]
            return [self.written(t) for t in pool[offset:None if n is None else offset + n]]
        size = SPLIT_SIZES[split]
        stop = size if n is None else min(size, offset + n)
        return [self.written(t) for t in _bank().get(split, stop)[offset:stop]]

    def written(self, task: Task) -> Task:
        """`task` in this env's notation. The bank words every task in Python's, which splits and ids hang on."""
        if self.notation == "python" or (self.notation == "mixed" and not _in_math_notation(task.prompt)):
            return task
        return task.model_copy(update={"prompt": math_notation(task.prompt)})

    def split_sizes(self) -> dict[str, int]:
        if self.categories:  # the bank deals the categories in turn: each is a fifth of every split
            return {s: n * len(self.categories) // len(CATEGORIES) for s, n in SPLIT_SIZES.items()}
        return dict(SPLIT_SIZES)

    def system_prompt(self) -> str:
        return ("Solve the math problem. Every answer is an exact integer. The `python` tool runs a Python 3 "
                "program in a sandbox and returns what it prints, so print the values you need. "
                "Give the final answer as just the number: no units, words or working.")

    def experts(self) -> dict[str, Callable[[], Any]]:
        return {"reasoner": lambda: reasoner, "coder": lambda: coder, "slipping-coder": lambda: slipping_coder,
                "trusting-coder": lambda: trusting_coder}


NOTATIONS = ("python", "math", "mixed")
_MATH_SIGNS = {" * ": " × ", " / ": " ÷ ", " - ": " − "}


def math_notation(text: str) -> str:
    """A problem's operators as a person writes them (`3 × 4 − 2`); the python tool still wants `*` and `-`."""
    for python, written in _MATH_SIGNS.items():
        text = text.replace(python, written)
    return text


def _in_math_notation(text: str) -> bool:
    """Half the problems, by a stable hash of the text: the `mixed` notation's choice."""
    return int(hashlib.sha256(f"notation:{text}".encode()).hexdigest()[:8], 16) % 2 == 1


def _categories(value: str | list[str] | None) -> tuple[str, ...]:
    """`categories` as given (`modular,word` or a list), checked; () for all of them."""
    if value is None or value == "":
        return ()
    names = [c.strip() for c in (value.split(",") if isinstance(value, str) else value) if str(c).strip()]
    unknown = sorted(set(names) - set(CATEGORIES))
    if unknown or not names:
        raise ConfigError(f"env math has no category {', '.join(unknown) or repr(value)}; categories: "
                          f"{', '.join(CATEGORIES)}")
    return tuple(c for c in CATEGORIES if c in names)
