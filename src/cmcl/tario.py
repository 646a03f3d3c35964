"""Tar bytes in and out, without `tarfile` objects: the hot path of sharding and shard reading.

Why not `tarfile`/webdataset: they cost ~10-20 us of Python per member and copy payloads in
16 KiB chunks, which made reading feature shards 100x slower than memory. Here a member is one
header (built by `tarfile.TarInfo.tobuf`, so the bytes are exactly what webdataset's
`TarWriter(mtime=0)` writes: PAX format, mode 0444, owner "bigdata") plus its payload, and
reading walks the 512-byte headers of an mmap, checking each header's checksum.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

BLOCK, RECORD = 512, 10240  # tar block; archives are padded to a 20-block record (tar -b20)
NUL = b"\0"
# characters a sample key may hold; others become "_" (`tar_key`), so ids must stay distinct
KEY_OK = re.compile(r"[^A-Za-z0-9_+-]")
TEXT_EXT = frozenset({"cls", "cls2", "class", "count", "index", "inx", "id"})


def npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def encode(rec: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(member name, bytes) of one record, in webdataset's order (sorted) and encodings."""
    key = rec["__key__"]
    out = []
    for k in sorted(rec):
        if k.startswith("_"):
            continue
        v, ext = rec[k], k.rsplit(".", 1)[-1]
        if isinstance(v, str):
            v = v.encode("utf-8")
        elif isinstance(v, np.ndarray) and ext == "npy":
            v = npy_bytes(v)
        elif ext in ("json", "jsn") and not isinstance(v, bytes | bytearray | memoryview):
            v = json.dumps(v).encode("utf-8")
        elif ext in TEXT_EXT and not isinstance(v, bytes | bytearray | memoryview):
            v = str(v).encode("ascii")
        elif not isinstance(v, bytes | bytearray | memoryview):
            raise ValueError(f"sample '{key}': no encoding for '{k}' ({type(v).__name__})")
        out.append((f"{key}.{k}", bytes(v)))
    return out


def tar_key(sample_id: str) -> str:
    """The tar key of a sample id: '.' would split it into suffixes, '/' into folders."""
    return KEY_OK.sub("_", sample_id)


def header(name: str, size: int) -> bytes:
    """The header `tarfile` writes for a member (PAX format, mode 0444, mtime 0, "bigdata").

    Short ASCII names (all of ours) are assembled from a fixed template, 10x faster than
    `TarInfo.tobuf`; anything else (long or non-ASCII names: PAX records) goes through it.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or not name.isascii() or size >= 8 ** 11:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, 0o444, "bigdata", "bigdata"
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    head = raw.ljust(100, NUL) + _MODE_IDS + b"%011o\0" % size + _MTIME
    chk = sum(head) + _TAIL_SUM + 8 * 32  # the checksum field counts as 8 spaces
    return head + b"%06o\0 " % chk + _TAIL


_MODE_IDS = b"0000444\0" + b"0000000\0" * 2  # mode, uid, gid
_MTIME = b"00000000000\0"
_TAIL = (b"0" + NUL * 100 + b"ustar\x0000" + b"bigdata".ljust(32, NUL) * 2
         + NUL * 183)  # type, linkname, magic, owner; devices (unset for files), prefix
_TAIL_SUM = sum(_TAIL)


def pad(n: int, to: int = BLOCK) -> int:
    return -n % to


def record_bytes(members: list[tuple[str, bytes]]) -> list[bytes]:
    """The byte chunks of one record in a tar (headers, payloads, block padding)."""
    chunks = []
    for name, data in members:
        chunks += [header(name, len(data)), data, NUL * pad(len(data))]
    return chunks


def closed_size(size: int) -> int:
    """Size of an archive of `size` member bytes once closed (end blocks, record padding)."""
    size += 2 * BLOCK
    return size + pad(size, RECORD)


class TarOut:
    """Append records to one tar; `add` returns the record's (offset, nbytes) for the index."""

    def __init__(self, path: Path) -> None:
        self.path, self.size = path, 0
        self.f = open(path, "wb")  # noqa: SIM115  (closed by close())

    def add(self, chunks: list[bytes]) -> tuple[int, int]:
        start = self.size
        self.f.writelines(chunks)
        self.size += sum(len(c) for c in chunks)
        last_pad = len(chunks[-1])  # nbytes ends at the last payload, as tarfile's offsets do
        return start, self.size - start - last_pad

    def close(self) -> None:
        end = closed_size(self.size)
        self.f.write(NUL * (end - self.size))
        self.f.close()


def split_name(name: str) -> tuple[str, str]:
    """'dir/s01.image.npy' -> ('dir/s01', 'image.npy'): webdataset's key/suffix rule."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


@contextlib.contextmanager
def open_map(path: Path) -> Iterator[mmap.mmap | bytes]:
    """A read-only mmap of a tar: payloads are sliced, never read in 16 KiB chunks."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m


def members(buf, where: str, start: int = 0, end: int | None = None
            ) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular member in buf[start:end].

    A bad checksum, an unparsable size or a member running past the end is a corrupt tar and
    an error naming it; PAX (`x`) and GNU long-name (`L`) headers supply long member names.
    """
    whole = end is None
    end = len(buf) if end is None else end
    if end > len(buf):  # a byte range from index.parquet that the file no longer holds
        raise ValueError(f"{where}: truncated tar (the index expects {end} bytes, the file "
                         f"has {len(buf)})")
    pos, long_name = start, None
    while pos + BLOCK <= end:
        hdr = buf[pos:pos + BLOCK]
        if hdr[0] == 0 and not hdr.strip(NUL):
            return  # end-of-archive blocks
        try:
            size = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
            chk = int(hdr[148:156].strip(b"\0 "), 8)
        except ValueError:
            raise ValueError(f"{where}: corrupt tar header at byte {pos}") from None
        if chk != sum(hdr) - sum(hdr[148:156]) + 256:  # the checksum field counts as spaces
            raise ValueError(f"{where}: corrupt tar header at byte {pos} (bad checksum)")
        data, kind = pos + BLOCK, hdr[156:157]
        pos = data + size + pad(size)
        if data + size > len(buf):
            raise ValueError(f"{where}: truncated tar (member at byte {data - BLOCK} runs past "
                             "the end of the file)")
        if kind == b"x":
            long_name = _pax_path(buf[data:data + size]) or long_name
        elif kind == b"L":
            long_name = buf[data:data + size].rstrip(NUL).decode("utf-8", "surrogateescape")
        elif kind in (b"0", NUL):
            name = long_name or _name(hdr)
            long_name = None
            yield name, data, size
    if pos < end:
        raise ValueError(f"{where}: truncated tar (the header at byte {pos} is cut short)")
    if whole and pos > 0:  # a cut on a block boundary drops whole samples without a trace
        raise ValueError(f"{where}: truncated tar (no end-of-archive blocks after byte {pos})")


def _name(hdr: bytes) -> str:
    name = hdr[:100].split(NUL, 1)[0].decode("utf-8", "surrogateescape")
    prefix = hdr[345:500].split(NUL, 1)[0] if hdr[257:262] == b"ustar" else b""
    return f"{prefix.decode('utf-8', 'surrogateescape')}/{name}" if prefix else name


def _pax_path(raw: bytes) -> str | None:
    """The `path` record of a PAX extended header ("<len> path=<name>\\n" records)."""
    pos = 0
    while pos < len(raw):
        sp = raw.find(b" ", pos)
        if sp < 0:
            break
        n = int(raw[pos:sp])
        field = raw[sp + 1:pos + n - 1]
        if field.startswith(b"path="):
            return field[5:].decode("utf-8", "surrogateescape")
        pos += n
    return None


def unsafe(key: str) -> bool:
    """An absolute key or one with a '..' component (string tests: this runs per sample)."""
    return key.startswith("/") or key == ".." or key.startswith("../") or "/../" in key \
        or key.endswith("/..")


def samples(buf, where: str, start: int = 0, end: int | None = None
            ) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {suffix: (data offset, size)}) per sample: consecutive members sharing a key.

    A key that climbs out of the archive (`../x`, `/etc/x`) marks a crafted or corrupt tar.
    """
    key, parts = None, {}
    for name, data, size in members(buf, where, start, end):
        k, suffix = split_name(name)
        if k != key:
            if unsafe(k):
                raise ValueError(f"{where}: member '{k}' has an unsafe path (absolute or '..'); "
                                 "refusing this tar")
            if key is not None:
                yield key, parts
            key, parts = k, {}
        if suffix in parts:  # two records with one key would merge into one sample
            raise ValueError(f"{where}: member '{name}' appears twice: two samples share the "
                             f"key '{k}'; refusing this tar")
        parts[suffix] = (data, size)
    if key is not None:
        yield key, parts
