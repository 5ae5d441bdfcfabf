"""The profile body: round trip, the bounds it is read within, and merging runs."""

from __future__ import annotations

import json

import pytest

from lazypull.prefetch.profile import (
    MAX_BYTES,
    MAX_FILES,
    MAX_RANGES,
    FileAccess,
    Profile,
    ProfileError,
    merge,
    merge_ranges,
)

IMG = "sha256:" + "a" * 64
L1, L2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _body(**over: object) -> bytes:
    obj: dict[str, object] = {
        "version": 1,
        "image": IMG,
        "runs": 1,
        "layers": [{"digest": L1, "files": [{"path": "/usr/bin/app", "t": 0.5, "ranges": [[0, 10], [10, 5]]}]}],
    }
    obj.update(over)
    return json.dumps(obj).encode()


def test_round_trip_normalizes_paths_and_joins_ranges() -> None:
    p = Profile.parse(_body())
    assert p.layers == {L1: [FileAccess("usr/bin/app", 0.5, ((0, 15),))]}
    assert Profile.parse(p.to_bytes()) == p


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        _body(version=2),
        _body(image="latest"),
        _body(layers=[{"digest": L1, "files": [{"path": "a", "t": -1}]}]),
        _body(layers=[{"digest": L1, "files": [{"path": "a", "t": 0, "ranges": [[0, 0]]}]}]),
        _body(layers=[{"digest": L1, "files": [{"path": "a", "t": 0, "ranges": [[0, 1]] * (MAX_RANGES + 1)}]}]),
        _body(layers=[{"digest": L1, "files": [{"path": f"f{i}", "t": 0} for i in range(MAX_FILES + 1)]}]),
        _body(layers=[{"digest": L1, "files": []}, {"digest": L1, "files": []}]),
        b" " * (MAX_BYTES + 1),
    ],
)
def test_malformed_or_unbounded_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(ProfileError):
        Profile.parse(body)


def test_merge_is_the_union_ordered_by_median_first_access() -> None:
    a = Profile(IMG, {L1: [FileAccess("lib/a", 0.1, ((0, 4),)), FileAccess("lib/b", 0.2)]})
    b = Profile(IMG, {L1: [FileAccess("lib/b", 0.05), FileAccess("lib/a", 0.3, ((8, 4),))], L2: [FileAccess("c", 9)]})
    c = Profile(IMG, {L1: [FileAccess("lib/b", 0.01), FileAccess("lib/a", 0.4, ((4, 4),))]})
    m = merge([a, b, c])
    assert m.runs == 3
    assert [f.path for f in m.layers[L1]] == ["lib/b", "lib/a"]  # medians 0.05 < 0.3
    assert m.layers[L1][1].ranges == ((0, 12),) and m.layers[L1][0].ranges == ()  # b whole
    assert m.layers[L2] == [FileAccess("c", 9)]
    with pytest.raises(ProfileError):
        merge([a, Profile("sha256:" + "b" * 64)])


def test_ranges_beyond_the_limit_are_coarsened_not_lost() -> None:
    r = merge_ranges([(i * 10, 1) for i in range(100)], limit=4)
    assert len(r) == 4 and r[0][0] == 0 and sum(r[-1]) == 991
