"""Opening a layer: footer and TOC in one request, still verified, replayed after a restart."""

from __future__ import annotations

import os

import pytest

from lazypull.errors import LazypullError
from lazypull.format import BytesSource, open_layer
from lazypull.format.counting import CountingSource
from lazypull.fs.opened import TailSource
from tests.format.helpers import build
from tests.support.images import Entry

FILES = [Entry("dir", type="dir"), *(Entry(f"dir/f{i}", data=os.urandom(3000)) for i in range(40))]


def test_footer_and_toc_come_in_one_request() -> None:
    blob, res = build(FILES)
    counted = CountingSource(BytesSource(blob))
    idx = open_layer(TailSource(counted), toc_digest=res.toc_digest)
    assert counted.reads == 1 and counted.bytes_read == min(len(blob), 64 << 10)
    assert idx.read(BytesSource(blob), "dir/f7", 0, 3000) == FILES[8].data


def test_a_toc_longer_than_the_tail_costs_one_more_request_for_the_rest_only() -> None:
    blob, res = build(FILES)
    counted = CountingSource(BytesSource(blob))
    idx = open_layer(TailSource(counted, tail=64), toc_digest=res.toc_digest)
    direct = open_layer(BytesSource(blob), toc_digest=res.toc_digest)
    assert counted.reads == 2 and counted.bytes_read < len(blob)
    assert sorted(e.name for e in idx.entries()) == sorted(e.name for e in direct.entries())


def test_reads_outside_the_tail_pass_through_and_tampered_tails_fail() -> None:
    blob, res = build(FILES)
    src = TailSource(BytesSource(blob), tail=1000)
    assert src.read_at(0, 10) == blob[:10] and src.read_at(len(blob) - 5, 5) == blob[-5:]
    assert src.read_at(len(blob) - 1500, 1500) == blob[-1500:]  # extends the held tail downwards
    bad = bytearray(blob)
    bad[-200] ^= 0xFF  # inside the TOC member
    with pytest.raises(LazypullError):
        open_layer(TailSource(BytesSource(bytes(bad))), toc_digest=res.toc_digest)
