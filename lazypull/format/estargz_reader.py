"""Open eStargz (and legacy stargz) blobs over any :class:`ReadAt` source.

Reads the footer, then the TOC (verified against the manifest's TOC digest when given),
validates every entry, and builds a :class:`LayerIndex`. Nothing in a TOC is trusted:
names, offsets, chunk layout and hardlink targets are checked before use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator

from lazypull.errors import DigestMismatchError, FormatError, InvalidDigestError
from lazypull.format.footer import ESTARGZ_FOOTER_SIZE, parse_footer
from lazypull.format.gzipmember import decompress_prefix
from lazypull.format.index import NO_XATTRS, Chunk, Entry, EntryType, LayerIndex, normalize
from lazypull.format.limits import DEFAULT_LIMITS, GZIP_MAX_RATIO, RATIO_SLACK, Limits, check_path
from lazypull.format.toc import PREFETCH_LANDMARK, TOC_TAR_NAME, TOCEntry, iter_entries, parse_modtime_ns
from lazypull.format.whiteout import whiteout_target
from lazypull.gcpause import collector_paused
from lazypull.oci import digest as digestlib
from lazypull.source import ReadAt

DEFAULT_MAX_TOC_BYTES = DEFAULT_LIMITS.max_toc_bytes
# Shared by every entry that is not a regular file (never appended to): 56 bytes less each.
_NO_CHUNKS: list[Chunk] = []
MAX_HARDLINK_HOPS = 64  # a hardlink to a hardlink to ... (tar writers never chain them)
_ENTRY_TYPES = {t.value: t for t in EntryType} | {"chunk": EntryType.REG}
# Bound once: an enum member's lookup through its class costs more than the check using it.
_DIR, _REG, _SYMLINK, _HARDLINK = EntryType.DIR, EntryType.REG, EntryType.SYMLINK, EntryType.HARDLINK
BLOCK = 512


def safe_name(raw: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Normalise a TOC name, rejecting absolute paths, '..' components and names over the
    length and depth limits."""
    check_path(raw, "TOC entry", limits)
    if raw[:1] != "/":
        # The common cases without splitting: "a/b", "./a/b" (tar -C dir .), "a/b/" (a directory).
        name = raw[2:] if raw[:2] == "./" else raw
        if name[-1:] == "/":
            name = name[:-1]
        clean = "\0" not in name and "//" not in name and "/." not in name
        if clean and name[:1] not in (".", "/") and name[-1:] != "/":
            return name  # no '.', '..' or empty components left
    if raw.startswith("/"):
        raise FormatError(f"TOC entry {raw[:200]!r} has an absolute path")
    if "\0" in raw:
        raise FormatError(f"TOC entry {raw[:200]!r} contains a NUL byte")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FormatError(f"TOC entry {raw[:200]!r} escapes the layer root with '..'")
    return "/".join(parts)


_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def _checked_digest(d: str, name: str, field: str) -> str:
    """A TOC digest, validated before it can become a cache path or a comparison key."""
    if _SHA256.fullmatch(d) is not None:
        return d  # the common case, without the general validator's lookups
    try:
        return digestlib.validate(d, ("sha256",))
    except InvalidDigestError as e:
        raise FormatError(f"TOC entry {name[:200]!r}: {field}: {e}") from None


class TOCIndex(LayerIndex):
    """A LayerIndex built from a parsed TOC (shared by eStargz and zstd:chunked)."""

    def __init__(
        self,
        toc: Iterable[TOCEntry],
        *,
        blob_size: int,
        data_end: int,
        fmt: str,
        decoder: ChunkDecoder,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.format = fmt
        self.blob_size = blob_size
        self.prefetch_end = 0
        self.limits = limits
        self._decoder = decoder
        self._entries: dict[str, Entry] = {"": Entry("", EntryType.DIR, mode=0o755)}
        self._children: dict[str, list[str]] = {"": []}
        self._stale: set[str] = set()  # directories whose child lists name replaced entries twice
        with collector_paused():
            self._build(toc, data_end)

    # -- construction ---------------------------------------------------------------
    def _ensure_dir(self, name: str) -> None:
        """Make *name* and its missing ancestors directories (iteratively: paths can be deep)."""
        missing: list[str] = []
        while name not in self._entries:
            missing.append(name)
            name = name.rpartition("/")[0]
        if self._entries[name].type != EntryType.DIR:
            raise FormatError(f"TOC entry {name[:200]!r} is used as a directory but is not one")
        for d in reversed(missing):
            parent, _, base = d.rpartition("/")
            self._entries[d] = Entry(d, EntryType.DIR, mode=0o755, implicit=True, chunks=_NO_CHUNKS)
            self._children[d] = []
            self._children[parent].append(base)

    def _build(self, toc: Iterable[TOCEntry], data_end: int) -> None:
        # The hot loop of a Prepare (30k entries: most of its time), so the common cases are
        # checked inline; anything unusual goes through the general helpers, which raise.
        chunk_offsets: list[int] = []
        add_offset = chunk_offsets.append
        last_reg: Entry | None = None
        hardlinks: list[Entry] = []
        links_to: dict[str, list[Entry]] = {}  # link target name -> the hardlinks naming it
        entries, children = self._entries, self._children
        DIR, REG, HARDLINK = _DIR, _REG, _HARDLINK
        types, digest_ok, modtime_ns = _ENTRY_TYPES, _SHA256.fullmatch, parse_modtime_ns
        limits = self.limits
        max_entries, max_chunk = limits.max_entries, limits.max_chunk_bytes
        short, max_depth = limits.max_name_bytes // 4, limits.max_depth  # a name this short is within the limit
        n = 0
        for te in toc:
            n += 1
            if n > max_entries:
                raise FormatError(f"TOC has more than {max_entries} entries (max_entries)")
            tname = te.type
            if tname == "chunk":
                if last_reg is None or normalize(te.name) != last_reg.name:
                    raise FormatError(f"chunk entry {te.name[:200]!r} does not follow its file")
                self._add_chunk(last_reg, te, data_end, chunk_offsets)
                continue
            if last_reg is not None:
                c = last_reg.chunks[-1]
                if c.file_offset + c.size != last_reg.size:
                    self._finish_reg(last_reg)
                last_reg = None
            raw = te.name
            name = raw[2:] if raw[:2] == "./" else raw  # as safe_name does, inline
            if name[-1:] == "/":
                name = name[:-1]
            if not (
                name
                and len(raw) <= short
                and name[0] not in "./"
                and name[-1] != "/"
                and "//" not in name
                and "/." not in name
                and "\0" not in name
                and raw.count("/") < max_depth
            ):
                name = safe_name(raw, limits)  # what the fast checks above do not cover
                if name == "":
                    root = entries[""]
                    root.mode, root.uid, root.gid = te.mode & 0o7777, te.uid, te.gid
                    root.mtime_ns, root.xattrs = modtime_ns(te.modtime), te.xattrs or NO_XATTRS
                    continue
            if ".wh." in name:
                whiteout_target(name)  # raises for a whiteout that would leave its directory
            t = types[tname]
            d = te.digest
            if d and digest_ok(d) is None:
                d = _checked_digest(d, name, "digest")
            if t is REG:
                e = Entry(
                    name,
                    t,
                    te.mode & 0o7777,
                    te.uid,
                    te.gid,
                    te.uname,
                    te.gname,
                    te.size,
                    modtime_ns(te.modtime),
                    "",
                    te.dev_major,
                    te.dev_minor,
                    te.xattrs or NO_XATTRS,
                    d,
                    [],
                )
            else:
                e = self._entry_from(te, name, t, d)
            existing = entries.get(name)
            if existing is not None:
                if existing.type is DIR and t is DIR:
                    # An implicit parent, or a directory listed again: the later metadata, same children.
                    e.chunks, e.nlink = existing.chunks, existing.nlink
                    entries[name] = e
                    continue
                self._drop(name, links_to)  # a name listed again: the later entry wins (format/lastwins.py)
            parent, _, base = name.rpartition("/")
            pe = entries.get(parent)
            if pe is None or pe.type is not DIR:
                self._ensure_dir(parent)
            entries[name] = e
            children[parent].append(base)
            if t is DIR:
                children[name] = []
            elif t is HARDLINK:
                hardlinks.append(e)
                links_to.setdefault(e.link_name, []).append(e)
            elif t is REG:
                if name == PREFETCH_LANDMARK:
                    self.prefetch_end = min(te.offset, data_end)
                size = te.size
                if size > 0:
                    cs, cd, off = te.chunk_size or size, te.chunk_digest, te.offset
                    if (
                        te.chunk_offset == 0
                        and cs <= size
                        and off < data_end
                        and te.inner_offset + cs <= max_chunk
                        and cd
                        and (cd == d or digest_ok(cd) is not None)
                    ):
                        e.chunks.append(Chunk(0, cs, off, 0, d if cd == d else cd, te.inner_offset))
                        add_offset(off)
                    else:
                        self._add_chunk(e, te, data_end, chunk_offsets)  # raises, or takes an unusual chunk
                    last_reg = e
        if last_reg is not None:
            self._finish_reg(last_reg)
        for d in self._stale:
            self._dedupe_children(d)
        for h in hardlinks:
            if self._entries.get(h.name) is not h:
                continue  # replaced by a later entry
            target = self._link_target(h)
            h.link_name = target.name
            target.nlink += 1
        self._fill_ends(chunk_offsets, data_end)

    def _link_target(self, h: Entry) -> Entry:
        """The non-hardlink entry *h* finally names; FormatError for cycles and dangling links."""
        target: Entry = h
        for _ in range(MAX_HARDLINK_HOPS):
            nxt = self._entries.get(target.link_name)
            if nxt is None or nxt.type == EntryType.DIR:
                raise FormatError(
                    f"hardlink {h.name[:200]!r} points at {target.link_name[:200]!r}, which is not a file in the layer"
                )
            if nxt.type != EntryType.HARDLINK:
                return nxt
            if nxt is h:
                raise FormatError(f"hardlink {h.name[:200]!r} is part of a hardlink cycle")
            target = nxt
        raise FormatError(f"hardlink {h.name[:200]!r}: chain of more than {MAX_HARDLINK_HOPS} hardlinks (or a cycle)")

    def _drop(self, name: str, links_to: dict[str, list[Entry]]) -> None:
        """Remove *name* and its subtree, replaced by a later entry as tar extraction does.

        Hardlinks made to a replaced file keep its content: the first becomes the file.
        Chunk offsets stay recorded, so the remaining chunks' spans are unchanged."""
        self._stale.add(name.rpartition("/")[0])  # its old place in the parent's list goes at the end
        stack = [name]
        while stack:  # iterative: a hostile TOC may nest deeply
            n = stack.pop()
            e = self._entries.pop(n, None)
            if e is None:
                continue  # a stale name listed again under a dropped directory
            stack.extend(f"{n}/{k}" for k in self._children.pop(n, None) or ())
            links = [h for h in links_to.pop(n, ()) if self._entries.get(h.name) is h]
            if not links or e.type not in (EntryType.REG, EntryType.HARDLINK):
                continue
            if e.type == EntryType.HARDLINK:
                target = e.link_name
            else:
                first, links = links[0], links[1:]
                e.name = target = first.name
                self._entries[target] = e
            for h in links:
                h.link_name = target
            links_to.setdefault(target, []).extend(links)

    def _dedupe_children(self, d: str) -> None:
        """Keep each live child once, at its last place (one pass, however many duplicates)."""
        kids = self._children.get(d)
        if kids is None:
            return
        prefix = d + "/" if d else ""
        seen: set[str] = set()
        out: list[str] = []
        for k in reversed(kids):
            if k not in seen and prefix + k in self._entries:
                seen.add(k)
                out.append(k)
        kids[:] = out[::-1]

    def _entry_from(self, te: TOCEntry, name: str, typ: EntryType, digest: str) -> Entry:
        """Any entry but a regular file (those are made inline in :meth:`_build`)."""
        e = Entry(
            name,
            typ,
            te.mode & 0o7777,
            te.uid,
            te.gid,
            te.uname,
            te.gname,
            0,
            parse_modtime_ns(te.modtime),
            "",
            te.dev_major,
            te.dev_minor,
            te.xattrs or NO_XATTRS,
            digest,
            _NO_CHUNKS,
        )
        if typ is _SYMLINK:
            if not te.link_name:
                raise FormatError(f"symlink {name[:200]!r} has no target")
            check_path(te.link_name, f"symlink {name[:200]!r} target", self.limits)
            e.link_name = te.link_name
        elif typ is _HARDLINK:
            e.link_name = safe_name(te.link_name, self.limits)
            if not e.link_name:
                raise FormatError(f"hardlink {name[:200]!r} has no target")
        return e

    def _add_chunk(self, e: Entry, te: TOCEntry, data_end: int, offsets: list[int]) -> None:
        if not te.chunk_digest:
            raise FormatError(f"{e.name[:200]!r}: chunk at {te.chunk_offset} has no chunkDigest; cannot verify it")
        if te.offset >= data_end:
            raise FormatError(f"{e.name[:200]!r}: chunk offset {te.offset} lies beyond the layer data ({data_end})")
        last = e.chunks[-1] if e.chunks else None
        expected = last.file_offset + last.size if last else 0
        if te.chunk_offset != expected:
            raise FormatError(
                f"{e.name[:200]!r}: chunk at file offset {te.chunk_offset}, expected {expected} (overlap or gap)"
            )
        size = te.chunk_size if te.chunk_size else e.size - te.chunk_offset
        if size <= 0 or te.chunk_offset + size > e.size:
            raise FormatError(f"{e.name[:200]!r}: chunk sizes do not add up to the file size {e.size}")
        if te.inner_offset + size > self.limits.max_chunk_bytes:
            raise FormatError(
                f"{e.name[:200]!r}: chunk at file offset {te.chunk_offset} declares {te.inner_offset + size} "
                f"uncompressed bytes, over the limit of {self.limits.max_chunk_bytes} (max_chunk_bytes)"
            )
        if te.chunk_digest == e.digest:
            digest = e.digest  # one string for a one-chunk file
        else:
            digest = _checked_digest(te.chunk_digest, e.name, "chunkDigest")
        e.chunks.append(Chunk(te.chunk_offset, size, te.offset, 0, digest, te.inner_offset))
        offsets.append(te.offset)

    def _finish_reg(self, e: Entry) -> None:
        covered = e.chunks[-1].file_offset + e.chunks[-1].size if e.chunks else 0
        if covered != e.size:
            raise FormatError(f"{e.name[:200]!r}: chunks cover {covered} of {e.size} bytes")

    def _fill_ends(self, offsets: list[int], data_end: int) -> None:
        """Each chunk's compressed span ends where the next one starts. A span that declares
        more than its compression can expand to is rejected here, before anything inflates."""
        starts = sorted(set(offsets))
        end_of = dict(itertools.pairwise(starts)).get  # every chunk's offset is among *starts*
        chunks = [c for e in self._entries.values() for c in e.chunks]
        if len({(c.blob_offset, c.inner_offset) for c in chunks}) != len(chunks):
            seen: set[tuple[int, int]] = set()
            for c in chunks:
                if (c.blob_offset, c.inner_offset) in seen:
                    raise FormatError(
                        f"{self._owner(c)[:200]!r}: chunk at blob offset {c.blob_offset} overlaps another chunk"
                    )
                seen.add((c.blob_offset, c.inner_offset))
        ratio = self._decoder.max_ratio
        total = 0
        for c in chunks:
            start = c.blob_offset
            end = c.blob_end = end_of(start, data_end)
            size = c.size
            total += size
            if c.inner_offset + size > ratio * (end - start) + RATIO_SLACK:
                raise FormatError(
                    f"{self._owner(c)[:200]!r}: chunk at blob offset {start} declares {size} bytes from "
                    f"{end - start} compressed bytes, more than {self.format} can hold"
                )
        if total > ratio * data_end + RATIO_SLACK * len(chunks):
            raise FormatError(
                f"the TOC declares {total} bytes of file data in {data_end} compressed bytes, "
                f"more than {self.format} can hold"
            )

    def _owner(self, chunk: Chunk) -> str:
        """The name of the file *chunk* belongs to (for an error message)."""
        return next((e.name for e in self._entries.values() if any(c is chunk for c in e.chunks)), "?")

    # -- LayerIndex -------------------------------------------------------------------
    def lookup(self, path: str) -> Entry | None:
        return self._entries.get(normalize(path))

    def children(self, path: str) -> list[str]:
        return list(self._children.get(normalize(path), ()))

    def entries(self) -> Iterator[Entry]:
        """In index order: the TOC's, each implicit directory before its first child (so
        parents come first; a name listed again takes its last place). A node's place in
        this order is its number in the overlay view (:mod:`lazypull.format.overlayview`)."""
        return iter(self._entries.values())  # not changed once built

    def decode_chunk(self, chunk: Chunk, raw: bytes) -> bytes:
        return self._decoder(chunk, raw)

    def __len__(self) -> int:
        return len(self._entries)


class ChunkDecoder:
    """Decompress a chunk's compressed span and verify it: the one place bytes get verified."""

    #: The most one compressed byte can expand to (bounds what a TOC may declare).
    max_ratio = GZIP_MAX_RATIO

    def __call__(self, chunk: Chunk, raw: bytes) -> bytes:
        if len(raw) != chunk.blob_end - chunk.blob_offset:
            raise FormatError(
                f"chunk at {chunk.blob_offset}: got {len(raw)} compressed bytes, expected "
                f"{chunk.blob_end - chunk.blob_offset}"
            )
        what = f"chunk at blob offset {chunk.blob_offset}"
        data = self.inflate(raw, chunk.inner_offset + chunk.size, what)[chunk.inner_offset :]
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != chunk.digest:
            raise DigestMismatchError(what, chunk.digest, actual)
        return data

    def inflate(self, raw: bytes, need: int, what: str) -> bytes:
        """Exactly the first *need* decompressed bytes, or FormatError."""
        raise NotImplementedError


class GzipChunkDecoder(ChunkDecoder):
    def inflate(self, raw: bytes, need: int, what: str) -> bytes:
        return decompress_prefix(raw, need, what)


def read_toc_member(source: ReadAt, toc_offset: int, end: int, max_toc_bytes: int) -> bytes:
    """The TOC JSON from the gzip member holding the ``stargz.index.json`` tar entry."""
    comp_len = end - toc_offset
    if comp_len <= 0:
        raise FormatError("TOC region is empty")
    if comp_len > max_toc_bytes:
        raise FormatError(f"TOC is {comp_len} bytes compressed, over the {max_toc_bytes} byte limit")
    raw = source.read_at(toc_offset, comp_len)
    header = decompress_prefix(raw, BLOCK, "TOC")
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    size_field = header[124:136].split(b"\0", 1)[0].strip()
    if name != TOC_TAR_NAME:
        # A PAX header may precede the entry; the reference never writes one.
        raise FormatError(f"the TOC tar entry is named {name!r}, expected {TOC_TAR_NAME!r}")
    try:
        size = int(size_field or b"0", 8)
    except ValueError:
        raise FormatError("TOC tar header has an invalid size") from None
    if size > max_toc_bytes:
        raise FormatError(f"TOC is {size} bytes, over the {max_toc_bytes} byte limit")
    data = decompress_prefix(raw, BLOCK + size, "TOC")
    return data[BLOCK:]


def open_estargz(
    source: ReadAt,
    *,
    toc_digest: str | None = None,
    max_toc_bytes: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> TOCIndex:
    """Open an eStargz or legacy stargz blob; verify the TOC when *toc_digest* is given."""
    if max_toc_bytes is not None:
        limits = dataclasses.replace(limits, max_toc_bytes=max_toc_bytes)
    if toc_digest:
        toc_digest = checked_toc_digest(toc_digest)
    size = source.size
    if size < 47:
        raise FormatError(f"blob is {size} bytes: too small to be eStargz (truncated?)")
    tail = source.read_at(max(size - ESTARGZ_FOOTER_SIZE, 0), min(size, ESTARGZ_FOOTER_SIZE))
    footer = parse_footer(tail, size)
    data_end = footer.toc_offset
    toc_json = read_toc_member(source, footer.toc_offset, size - footer.size, limits.max_toc_bytes)
    if toc_digest:
        actual = "sha256:" + hashlib.sha256(toc_json).hexdigest()
        if actual != toc_digest:
            raise DigestMismatchError("TOC", toc_digest, actual)
    entries = iter_entries(toc_json, limits)
    del toc_json  # the generator holds the only reference and drops it once decoded
    return TOCIndex(
        entries, blob_size=size, data_end=data_end, fmt="estargz", decoder=GzipChunkDecoder(), limits=limits
    )


def checked_toc_digest(d: str) -> str:
    """The manifest's TOC digest annotation, validated (it is compared, never trusted as text)."""
    try:
        return digestlib.validate(d, ("sha256",))
    except InvalidDigestError as e:
        raise FormatError(f"TOC digest annotation: {e}") from None
