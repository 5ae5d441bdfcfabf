"""A profile turned into what to fetch: per lazy layer of an image, its entries in
first-access order and its share of a byte budget (the daemon's and ``open_image``'s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lazypull.prefetch.profile import FileAccess, Profile


@dataclass
class ProfilePlan:
    """Per lazy layer of one image: its entries (``[path, [[offset, length], ...]]`` in
    first-access order) and its share of the byte budget."""

    layers: dict[str, list[list[Any]]] = field(default_factory=dict)
    budgets: dict[str, int] = field(default_factory=dict)
    files: int = 0
    cut: int = 0  # files left out for the budget


def plan_for(profile: Profile, layer_digests: list[str], budget: int) -> ProfilePlan:
    """*profile*'s entries for the image's lazy layers *layer_digests*, in first-access order
    across them, cut where the content named would pass *budget* bytes. A whole-file entry's
    size is the layer server's to know: the budget left over is shared by the layers with one."""
    wanted = set(layer_digests)
    entries: list[tuple[float, str, FileAccess]] = sorted(
        ((f.t, d, f) for d, files in profile.layers.items() if d in wanted for f in files), key=lambda x: x[0]
    )
    plan = ProfilePlan()
    known: dict[str, int] = {}
    whole: set[str] = set()
    used = 0
    for i, (_, digest, f) in enumerate(entries):
        cost = sum(n for _, n in f.ranges)
        if used + cost > budget:
            plan.cut = len(entries) - i
            break
        used += cost
        known[digest] = known.get(digest, 0) + cost
        if not f.ranges:
            whole.add(digest)
        plan.layers.setdefault(digest, []).append([f.path, [list(r) for r in f.ranges]])
        plan.files += 1
    slack = (budget - used) // len(whole) if whole else 0
    plan.budgets = {d: known.get(d, 0) + (slack if d in whole else 0) for d in plan.layers}
    return plan
