"""`openai:<model>@<base_url>`: any OpenAI-compatible chat-completions server (`vllm serve` first of all).

Requests go out as plain JSON over `httpx2.AsyncClient`s of 4 connections each, per event loop, which every
episode shares in turn: the openai SDK's request transforms and pydantic response models cost about a third of
the client's CPU per call, on the one event loop all concurrent episodes share (bench/RESULTS.md,
"concurrency scaling").

Retries are ours: exponential backoff with jitter on 429, 408, 5xx, timeouts, connection errors and
malformed bodies; any other 4xx fails at once. Either way the caller gets a PolicyError with one line
that says what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from typing import Any, Callable, TypeVar

import httpx2

from trajdistill.envs import ConfigError, PolicyRequest, ToolCall, Turn

from ._options import OpenAIOptions
from ._policy import ActionFormat, PolicyError

REACT_STOP = ["\nObservation:"]
_URL = re.compile(r"^(.+?)@(https?://\S+)$")
_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)
_RETRY_STATUS = {408, 429}
MAX_BACKOFF_S = 30.0
# connections per httpx2 client: its pool rescans every connection several times per request, so one pool of
# 32 costs more CPU than 8 pools of 4 taken in turn (bench/RESULTS.md, "concurrency scaling")
POOL_CONNECTIONS = 4
T = TypeVar("T")


class _Retryable(Exception):
    """One failed attempt that is worth another try; `wait_s` is the server's retry-after if it sent one."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


def parse_target(target: str, base_url: str | None = None) -> tuple[str, str]:
    """`model@http://host:port/v1` -> (model, base_url); no `@` means `base_url`, OPENAI_BASE_URL or OpenAI itself."""
    m = _URL.match(target)
    if m:
        if base_url:
            raise ConfigError(f"openai:{target} names its URL; drop the base_url option or the @URL")
        return m.group(1), m.group(2).rstrip("/")
    if "@" in target:
        raise PolicyError(f"openai policy target {target!r}: the part after @ must be an http(s) URL, "
                          "e.g. openai:MODEL@http://127.0.0.1:8000/v1")
    return target, (base_url or os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")).rstrip("/")


def chat_messages(messages: list[dict[str, Any]], action_format: ActionFormat) -> list[dict[str, Any]]:
    """Messages a chat endpoint accepts. In ReAct text, tool results become user `Observation:` turns;
    with native tools, a tool result that answers no tool call (a parse error) does too."""
    out = []
    for m in messages:
        role, content = m.get("role"), _text(m.get("content"))
        if role == "tool" and (action_format == "react" or not m.get("tool_call_id")):
            out.append({"role": "user", "content": content if content.startswith("Observation:")
                        else f"Observation: {content}"})
        elif role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if action_format == "tools" and m.get("tool_calls"):
                msg["tool_calls"] = m["tool_calls"]
            out.append(msg)
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": content})
        else:
            out.append({"role": role, "content": content})
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def split_think(content: str, reasoning: str | None) -> tuple[str, str | None]:
    """Move a leading <think>...</think> block into reasoning when the server did not separate it."""
    m = _THINK.match(content)
    if m and not reasoning:
        return content[m.end():].strip(), m.group(1).strip()
    return content.strip(), reasoning


class OpenAIPolicy:
    backend = "openai"

    def __init__(self, target: str, *, env: Any = None, spec: str = "", options: OpenAIOptions | None = None,
                 **fields: Any):
        o = options or OpenAIOptions.parse(fields)
        self.options = o
        self.model, self.base_url = parse_target(target, o.base_url)
        self.spec = spec or f"openai:{target}"
        self.action_format: ActionFormat = o.action_format
        self.temperature, self.max_tokens, self.seed = o.temperature, o.max_new_tokens, o.seed
        self.max_retries, self.timeout_s, self.backoff_s = o.max_retries, o.timeout_s, o.backoff_s
        self.concurrency = o.concurrency
        self._api_key = o.api_key or os.environ.get(o.api_key_env) or "EMPTY"
        self._per_loop: dict[Any, tuple[list[httpx2.AsyncClient], asyncio.Semaphore]] = {}
        self._calls = 0  # which of the loop's clients the next call takes
        self._urls: dict[str, httpx2.URL] = {}

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def _client(self) -> tuple[httpx2.AsyncClient, asyncio.Semaphore]:
        # httpx connections belong to one event loop; a sync caller may run several loops in turn
        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            pools = -(-self.concurrency // POOL_CONNECTIONS)
            self._per_loop[loop] = ([self._new_client() for _ in range(pools)], asyncio.Semaphore(self.concurrency))
        clients, slots = self._per_loop[loop]
        self._calls += 1
        return clients[self._calls % len(clients)], slots

    def _new_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            base_url=self.base_url + "/", timeout=self.timeout_s, trust_env=False,
            headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"},
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=2 * POOL_CONNECTIONS))

    async def __call__(self, request: PolicyRequest) -> Turn:
        start = time.monotonic()
        turn = await self._post("chat/completions", self._request_kwargs(request), _turn)
        turn.latency_s = time.monotonic() - start
        return turn

    async def prompt_logprobs(self, token_ids: list[int]) -> list[dict[str, Any] | None]:
        """Per token of `token_ids`, the server's log-probability of it given the tokens before it, as
        `{"id", "logprob", "token"}` (the decoded token); None for the first. vLLM answers this through
        `prompt_logprobs` on its completions endpoint: how a served white-box teacher scores a student's tokens."""
        body = {"model": self.model, "prompt": list(token_ids), "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0}
        return await self._post("completions", body, lambda resp: _prompt_logprobs(resp, token_ids))

    async def _post(self, path: str, kwargs: dict[str, Any], parse: Callable[[Any], T]) -> T:
        """POST `kwargs` as JSON to `path` and parse the reply, with our retries (see the module doc)."""
        body = json.dumps(kwargs, ensure_ascii=False).encode()
        client, slots = self._client()
        attempts = self.max_retries + 1
        async with slots:
            for attempt in range(attempts):
                try:
                    return parse(await self._create(client, path, body))
                except _Retryable as err:
                    if attempt + 1 == attempts:
                        raise PolicyError(f"openai endpoint {self.base_url} failed after {attempts} attempts: "
                                          f"{err}") from None
                    await asyncio.sleep(self._backoff(attempt, err.wait_s))
        raise AssertionError("unreachable")

    def _request_kwargs(self, request: PolicyRequest) -> dict[str, Any]:
        sampling = {**self.sampling(), **request.sampling}
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": chat_messages(request.messages, self.action_format),
            "temperature": sampling.get("temperature", self.temperature),
            "max_tokens": sampling.get("max_tokens", self.max_tokens),
        }
        if sampling.get("seed") is not None:
            kwargs["seed"] = sampling["seed"]
        if self.action_format == "react":
            kwargs["stop"] = REACT_STOP
        elif request.tools:
            kwargs["tools"] = [t.openai() for t in request.tools]
        return kwargs

    async def _create(self, client: httpx2.AsyncClient, path: str, body: bytes) -> Any:
        """One POST of `body`: the parsed JSON of a 2xx reply, else _Retryable or PolicyError."""
        try:
            resp = await client.post(self._url(path), content=body)
        except httpx2.TimeoutException:
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except httpx2.TransportError as err:  # refused, reset, closed mid-reply
            raise _Retryable(f"connection error: {_one_line(err) or type(err).__name__}") from None
        if not resp.is_success:
            reason = f"HTTP {resp.status_code} {_error_message(resp)}"
            if resp.status_code in _RETRY_STATUS or resp.status_code >= 500:
                raise _Retryable(reason, _retry_after(resp.headers))
            raise PolicyError(f"openai endpoint {self.base_url} rejected the request: {reason}")
        try:
            return json.loads(resp.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _Retryable(f"malformed response: {_one_line(err)}") from None

    def _url(self, path: str) -> httpx2.URL:
        # an absolute URL object: the client skips parsing and joining a relative one on every request (~45 us)
        if path not in self._urls:
            self._urls[path] = httpx2.URL(f"{self.base_url}/{path}")
        return self._urls[path]

    def _backoff(self, attempt: int, wait_s: float | None) -> float:
        if wait_s is not None:
            return min(wait_s, MAX_BACKOFF_S)
        delay = min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S)
        return delay * random.uniform(0.5, 1.0)  # jitter spreads retries of concurrent episodes

    async def close(self) -> None:
        clients, self._per_loop = list(self._per_loop.items()), {}
        for loop, (pool, _) in clients:
            if loop is asyncio.get_running_loop():
                for client in pool:
                    await client.aclose()


def _turn(resp: Any) -> Turn:
    """The Turn in a chat-completion body; a body of another shape is worth a retry."""
    choices = resp.get("choices") if isinstance(resp, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    msg = first.get("message") if isinstance(first, dict) else None
    if not isinstance(msg, dict):
        raise _Retryable("malformed response: a 200 without choices")
    try:
        reasoning = msg.get("reasoning_content") or msg.get("reasoning")
        content, reasoning = split_think(msg.get("content") or "", reasoning)
        calls = [ToolCall(name=c["function"]["name"], arguments=_arguments(c["function"].get("arguments")),
                          id=c.get("id") or "") for c in msg.get("tool_calls") or []]
        usage = resp.get("usage") or {}
        counts = {"prompt_tokens": usage.get("prompt_tokens") or 0,
                  "completion_tokens": usage.get("completion_tokens") or 0} if usage else {}
        return Turn(content=content, reasoning=reasoning, tool_calls=calls, usage=counts)
    except (KeyError, TypeError, AttributeError, ValueError) as err:  # a pydantic ValidationError is a ValueError
        raise _Retryable(f"malformed response: {_one_line(err)[:200]}") from None


def _prompt_logprobs(resp: Any, token_ids: list[int]) -> list[dict[str, Any] | None]:
    """The per-token entries of a completions body with `prompt_logprobs`; another shape is worth a retry."""
    choices = resp.get("choices") if isinstance(resp, dict) else None
    entries = choices[0].get("prompt_logprobs") if isinstance(choices, list) and choices else None
    if not isinstance(entries, list) or len(entries) != len(token_ids):
        raise _Retryable("malformed response: no prompt_logprobs for every prompt token (does the server run vLLM?)")
    out: list[dict[str, Any] | None] = [None]
    for token, entry in zip(token_ids[1:], entries[1:]):
        found = entry.get(str(token)) if isinstance(entry, dict) else None
        if not isinstance(found, dict) or not isinstance(found.get("logprob"), (int, float)):
            raise _Retryable(f"malformed response: prompt_logprobs lack token {token}")
        out.append({"id": token, "logprob": float(found["logprob"]), "token": found.get("decoded_token")})
    return out


def _arguments(raw: str | None) -> Any:
    """Tool-call arguments as a dict; unparseable JSON stays a string so the loop reports it to the model."""
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError:
        return raw


def _retry_after(headers: httpx2.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date; fall back to our own backoff
    return None


def _error_message(resp: httpx2.Response) -> str:
    """The server's own words: `error.message` of a JSON body, else the body's text, else the status phrase."""
    try:
        body = json.loads(resp.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        if text:
            return _one_line(text)[:200]
    return _one_line(resp.text or resp.reason_phrase)[:200]


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())
