"""Tar bytes in and out: webdataset where it meets the pipeline's targets, by hand where not.

Streaming reads (`read_tars`: `cmcl.streams`, `cmcl.shards.iter_samples`, the embed stage) go
through webdataset's tar iterators, with the checks they lack (sample counts against
sizes.json/index.parquet: tarfile's stream mode ends silently at a cut or corrupt header; unsafe
and duplicated keys; errors naming the tar). Two paths stay hand-written because webdataset
misses a target there (benchmarks/bench_tar.py -> results/tar.json: AMD EPYC, one thread,
process CPU time, load 3-4, 2026-12-01):
- writing (`TarOut`, `record_bytes`): the shard stage (`shard_task`, 2,000 files, 76 MB) ran
  at 487 MB/s with this writer and 262 MB/s with webdataset's `TarWriter(mtime=0)` in its
  place, 0.41x vs 0.22x of `tar -cf` (target >= 0.5x); the writers alone: 81,200 vs 21,200
  samples/s (512-d features), 5,570 vs 1,900 samples/s (512 KiB media). A member is one header
  (what `TarWriter(mtime=0)` writes, byte for byte, tested: PAX format, mode 0444, owner
  "bigdata") plus its payload.
- whole-tar feature reads (`samples` over an mmap; `read_features`, in train and evaluate):
  99,600 decoded 512-d samples/s vs 12,900 through `WebDataset(...).decode()`, which is 0.65x
  of a bare batch-64 training step at d = 512 (19,800 samples/s; target >= 1x). It walks the
  512-byte headers, checking each checksum, and slices payloads out of the map.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping
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


def members(buf, where: str) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular member of the whole tar in buf.

    A bad checksum, an unparsable size or a member running past the end is a corrupt tar and
    an error naming it; PAX (`x`) and GNU long-name (`L`) headers supply long member names.
    """
    end, pos, long_name = len(buf), 0, None
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
        if data + size > end:
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
    if pos > 0:  # a cut on a block boundary drops whole samples without a trace
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


def samples(buf, where: str) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {suffix: (data offset, size)}) per sample of a whole tar: consecutive members
    sharing a key."""
    key, parts = None, {}
    for name, data, size in members(buf, where):
        k, suffix = split_name(name)
        if k != key:
            _check_key(k, where)
            if key is not None:
                yield key, parts
            key, parts = k, {}
        _check_suffix(suffix, parts, name, k, where)
        parts[suffix] = (data, size)
    if key is not None:
        yield key, parts


def _check_key(key: str, where: str) -> None:
    """A key that climbs out of the archive (`../x`, `/etc/x`) marks a crafted or corrupt tar."""
    if unsafe(key):
        raise ValueError(f"{where}: member '{key}' has an unsafe path (absolute or '..'); "
                         "refusing this tar")


def _check_suffix(suffix: str, seen, name: str, key: str, where: str) -> None:
    if suffix in seen:  # two records with one key would merge into one sample
        raise ValueError(f"{where}: member '{name}' appears twice: two samples share the key "
                         f"'{key}'; refusing this tar")


class _Span:
    """Bytes [start, end) of an open file as a stream: tarfile reads it to its end."""

    def __init__(self, f, start: int, end: int) -> None:
        f.seek(start)
        self.f, self.left = f, end - start

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


def read_tars(pieces: Iterable[Mapping]) -> Iterator[dict]:
    """Raw samples (`__key__`, `__url__`, suffix -> bytes) of tar pieces, in order, through
    webdataset's tar iterators; nothing is decoded (no member is ever unpickled).

    A piece is {"url", "count"} (a whole tar holding `count` samples, from sizes.json) or
    {"url", "start", "end", "count"} (the `count` samples whose bytes index.parquet places in
    [start, end)). Fewer or more samples than `count` is an error naming the tar: tarfile's
    stream mode ends silently at a header that is cut short or fails its checksum.
    """
    # imported here: train/evaluate read whole tars by mmap and never need webdataset
    from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

    def checked(files: Iterator[dict], url: str) -> Iterator[dict]:
        key, seen = None, set()
        for f in files:
            k, suffix = base_plus_ext(f["fname"])
            if k != key:
                _check_key(k or "", url)
                key, seen = k, set()
            _check_suffix(suffix, seen, f["fname"], k, url)
            seen.add(suffix)
            yield f

    for p in pieces:
        url, count, got, last = p["url"], p["count"], 0, None
        with open(url, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start, end = p.get("start", 0), p.get("end")
            if end is not None:
                end += pad(end)  # tarfile wants the last member's block padding too
                if end > size:  # a byte range the file no longer holds
                    raise ValueError(f"{url}: truncated tar (the index expects {end} bytes, "
                                     f"the file has {size})")
            stream = f if end is None else _Span(f, start, end)
            files = tar_file_expander([{"url": url, "stream": stream}], eof_value=None)
            try:
                for sample in group_by_keys(checked(files, url), lcase=False):
                    got, last = got + 1, sample["__key__"]
                    yield sample
            except tarfile.TarError as e:  # webdataset appends " @ <stream>" to the message
                msg = str(e.args[0]).split(" @ ")[0]
                what = ("truncated tar (a member runs past the end of the file)"
                        if "end of data" in msg else f"corrupt tar ({msg})")
                raise ValueError(f"{url}: {what}") from None
            if got != count:
                raise ValueError(_miscount(url, f, size, p, got, last))


def _miscount(url: str, f, size: int, piece: Mapping, got: int, last: str | None) -> str:
    """Why a tar piece gave `got` samples, not the count expected: it was cut short, or tarfile
    met a header it could not read (it stops there without a word)."""
    ranged = piece.get("end") is not None
    expected = (f"index.parquet places {piece['count']} samples from byte {piece['start']}"
                if ranged else f"sizes.json lists {piece['count']} samples")
    if got > piece["count"]:
        return f"{url}: the tar holds {got} samples where {expected}"
    where = f"after sample '{last}'" if last else "before the first sample"
    if not ranged and not _closed(f, size):
        return f"{url}: truncated tar (the file ends {where}; {expected}, {got} read)"
    return f"{url}: corrupt tar (a header {where} is unreadable; {expected}, {got} read)"


def _closed(f, size: int) -> bool:
    """Whether a tar ends as a closed archive does: whole blocks, the last two of them zeros."""
    if size % BLOCK or size < 2 * BLOCK:
        return False
    f.seek(size - 2 * BLOCK)
    return not f.read(2 * BLOCK).strip(NUL)
