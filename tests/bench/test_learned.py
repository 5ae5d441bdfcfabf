"""Mode lazypull-learned: the other lazy modes' daemons look no profile up, so the image
alone is what they measure."""

from __future__ import annotations

import tomllib

from lazypull.bench.learned import NO_PROFILES
from lazypull.bench.runner import MODES, SNAPSHOTTER
from lazypull.service.config import DaemonConfig


def test_other_modes_turn_profiles_off_and_learned_is_a_lazypull_mode() -> None:
    cfg = DaemonConfig.from_mapping(tomllib.loads("no_background_fetch = true\n" + NO_PROFILES))
    assert cfg.profile_budget_bytes == 0 and cfg.no_background_fetch
    assert DaemonConfig.from_mapping({}).profile_budget_bytes > 0
    assert "lazypull-learned" in MODES and SNAPSHOTTER["lazypull-learned"] == "lazypull"
