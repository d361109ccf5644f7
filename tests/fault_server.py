"""A scriptable OpenAI-compatible chat-completions server for fault tests and benchmarks.

    def script(index, body):               # index counts requests from 0; body is the request JSON
        return Error(500) if index < 2 else Reply("Thought: done\\nFinal Answer: 4")

    with FaultServer(script) as base_url:  # e.g. http://127.0.0.1:40123/v1
        policy = OpenAIPolicy("m@" + base_url, ...)

A script may also be a list of actions (request i gets item i; past the end, the default reply).
The server runs uvicorn on its own event loop in a background thread, on a free port.
`serve_in_subprocess(script)` runs it in a forked process instead: no GIL shared with the client
(benchmarks), and a test can kill it mid-run (crash tests) through the yielded process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Union

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_TEXT = "Thought: I know the answer.\nFinal Answer: 42"


@dataclass
class Reply:
    """A valid completion: ReAct text, or native tool calls (name, arguments dict or raw string)."""

    content: str | None = DEFAULT_TEXT
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)
    reasoning: str | None = None  # sent as `reasoning_content`, the vLLM field
    usage: tuple[int, int] | None = (11, 7)  # prompt, completion
    delay_s: float = 0.0  # latency to add before answering


@dataclass
class Error:
    status: int = 500
    message: str = "injected failure"
    retry_after: float | None = None  # seconds, sent as retry-after (and retry-after-ms)


@dataclass
class Stall:
    """Answer nothing for `seconds` (longer than the client timeout), then a valid reply."""

    seconds: float = 30.0


@dataclass
class Malformed:
    """A 200 whose body is not a chat completion: raw text, or JSON without `choices`."""

    body: str = "this is not json"
    content_type: str = "application/json"


NO_CHOICES = Malformed(body='{"id": "x", "object": "chat.completion"}')
Action = Union[Reply, Error, Stall, Malformed]
Script = Union[Callable[[int, dict], Action | None], list[Action], None]


class FaultServer:
    def __init__(self, script: Script = None, *, model: str = "fault-model"):
        self.script = script
        self.model = model
        self.requests: list[dict] = []  # every request body, in arrival order
        self._lock = threading.Lock()
        self._closing: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> str:
        self.start()
        return self.base_url

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only when proto is TCP
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/v1/chat/completions", self._handle, methods=["POST"]),
                                Route("/v1/models", self._models, methods=["GET"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fault server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        loop = getattr(self, "_loop", None)
        if loop is not None and self._closing is not None:
            loop.call_soon_threadsafe(self._closing.set)  # wake stalled handlers
        self._thread.join(timeout=10)
        self._server = None

    def _next(self, body: dict) -> tuple[int, Action]:
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
        if callable(self.script):
            action = self.script(index, body)
        elif isinstance(self.script, list) and index < len(self.script):
            action = self.script[index]
        else:
            action = None
        return index, action or Reply()

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _handle(self, request: Request) -> Response:
        if self._closing is None:
            self._loop = asyncio.get_running_loop()
            self._closing = asyncio.Event()
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return JSONResponse({"error": {"message": "request body is not JSON"}}, status_code=400)
        _, action = self._next(body)
        if isinstance(action, Error):
            return _error(action)
        if isinstance(action, Malformed):
            return Response(action.body, status_code=200, media_type=action.content_type)
        if isinstance(action, Stall):
            await self._sleep(action.seconds)
            action = Reply()
        if action.delay_s:
            await self._sleep(action.delay_s)
        return JSONResponse(self._completion(body, action))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return

    def _completion(self, body: dict, reply: Reply) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.reasoning is not None:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
                for i, (name, args) in enumerate(reply.tool_calls)]
        out: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
        }
        if reply.usage is not None:
            p, c = reply.usage
            out["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return out


def _error(action: Error) -> Response:
    headers = {}
    if action.retry_after is not None:
        headers["retry-after"] = str(action.retry_after)
        headers["retry-after-ms"] = str(int(action.retry_after * 1000))
    body = {"error": {"message": action.message, "type": "injected", "code": action.status}}
    return JSONResponse(body, status_code=action.status, headers=headers)


@contextlib.contextmanager
def serve_in_subprocess(script: Script = None) -> Iterator[tuple[str, multiprocessing.Process]]:
    """A FaultServer in a forked child; yields (base_url, process). Request records stay in the child."""
    ctx = multiprocessing.get_context("fork")  # fork: the script may be a lambda or closure
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(script, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(15):
            raise RuntimeError("fault server subprocess did not start")
        yield parent.recv(), proc
    finally:
        proc.terminate()
        proc.join(5)


def _child(script: Script, conn: Any) -> None:
    server = FaultServer(script)
    server.start()
    conn.send(server.base_url)
    server._thread.join()
