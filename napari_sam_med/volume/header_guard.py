"""Check a volume file's header against the bytes on disk BEFORE any voxel is allocated.

A header claims a size (dimensions x element size); SimpleITK allocates that much before it
notices that the file is short, so a 4 KB file claiming 8 GiB could take the machine down.
:func:`check_claimed_size` parses the header itself (NIfTI through nibabel, NRRD and MetaImage
by hand: only the few fields needed) and refuses, naming the file, the claimed size and the
available bytes, when:

* uncompressed data: the file (or the detached data file) holds fewer bytes than claimed;
* gzip data (``.nii.gz``, NRRD ``encoding: gzip``): the stream decompresses to fewer bytes than
  claimed (the gzip trailer is checked first; the stream is decompressed, in 64 KiB chunks,
  only when the trailer disagrees);
* any compressed data (also zlib MetaImage and bzip2 NRRD): the claim exceeds
  :data:`MAX_COMPRESSION_RATIO` times the compressed bytes (deflate cannot compress more than
  about 1032:1, so such a claim cannot be true) -- this is the documented cap;
* any data: the claim exceeds the memory the system has available (MemAvailable + free swap).

Layouts the parser does not follow (NRRD ``data file: LIST``, MetaImage file lists) only get the
memory check. Missing detached data files are named.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from .geometry import VolumeError

MAX_COMPRESSION_RATIO = 1032  # deflate's upper bound; bzip2 is checked with the same cap
MAX_HEADER_BYTES = 1 << 20  # text headers longer than this are not headers

_NRRD_SIZES = (
    ("long long", 8), ("longlong", 8), ("64", 8), ("double", 8), ("float", 4), ("32", 4),
    ("short", 2), ("16", 2), ("char", 1), ("8", 1), ("int", 4),
)  # fmt: skip
_MET_SIZES = {
    "CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4,
    "ULONG": 4, "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8,
}  # fmt: skip


def check_claimed_size(path: Path, kind: str) -> None:
    """Raise :class:`VolumeError` if ``path``'s header claims more data than it can hold.

    Args:
        path: a NIfTI, NRRD (``.nrrd``/``.nhdr``) or MetaImage (``.mha``/``.mhd``) file.
        kind: ``"nifti"``, ``"nrrd"`` or ``"metaimage"``.
    """
    if kind == "nifti":
        claimed, data, offset, encoding = _nifti_claim(path)
    elif kind == "nrrd":
        claimed, data, offset, encoding = _nrrd_claim(path)
    elif kind == "metaimage":
        claimed, data, offset, encoding = _meta_claim(path)
    else:
        return
    _check_memory(path, claimed)
    if data is None:
        return
    if not data.is_file():
        raise VolumeError(f"{path}: its header names the data file {data}, which does not exist")
    _check_bytes(path, data, offset, claimed, encoding)


def _check_bytes(path: Path, data: Path, offset: int, claimed: int, encoding: str) -> None:
    size = data.stat().st_size
    where = "" if data == path else f" (data file {data})"
    stored = size - offset if offset >= 0 else size
    if encoding == "raw":
        if offset < 0:  # data at the end of the file: the file must at least hold it
            stored = size
        if stored < claimed:
            raise _short(path, claimed, stored, "bytes of data on disk" + where)
        return
    if claimed > MAX_COMPRESSION_RATIO * max(stored, 1) + 1024:
        raise _short(
            path, claimed, stored, "compressed bytes on disk" + where,
            f"; {encoding} data cannot expand more than {MAX_COMPRESSION_RATIO}:1",
        )  # fmt: skip
    if encoding == "gzip":
        actual = _gzip_length(data, offset, claimed)
        if actual < claimed:
            raise _short(path, claimed, actual, "bytes after decompressing the gzip data" + where)


def _short(path: Path, claimed: int, available: int, what: str, note: str = "") -> VolumeError:
    return VolumeError(
        f"{path}: truncated or corrupt: its header claims {claimed} bytes of voxel data "
        f"({_human(claimed)}), but only {available} {what} are available{note}"
    )


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _check_memory(path: Path, claimed: int) -> None:
    avail = available_memory()
    if avail is not None and claimed > avail:
        raise VolumeError(
            f"{path}: its header claims {claimed} bytes of voxel data ({_human(claimed)}), more "
            f"than the {_human(avail)} of memory available; refusing to allocate it"
        )


def available_memory() -> int | None:
    """MemAvailable + SwapFree in bytes from ``/proc/meminfo`` (None where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {k: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in fh)}
        return info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _gzip_length(data: Path, offset: int, claimed: int) -> int:
    """Decompressed length of the gzip stream at ``offset`` (stops counting at ``claimed``)."""
    with open(data, "rb") as fh:
        if offset <= 0:  # whole file, or data at the end: the trailer holds ISIZE mod 2**32
            fh.seek(-4, os.SEEK_END)
            if int.from_bytes(fh.read(4), "little") == claimed % 2**32:
                return claimed
        fh.seek(max(offset, 0))
        actual = 0
        try:
            with gzip.GzipFile(fileobj=fh) as gz:
                while actual < claimed and (chunk := gz.read(1 << 16)):
                    actual += len(chunk)
        except (OSError, EOFError, zlib.error):
            pass  # a truncated or corrupt stream ends early: `actual` is what could be read
    return actual


# ------------------------------------------------------------------------------ NIfTI
def _nifti_claim(path: Path) -> tuple[int, Path, int, str]:
    import nibabel
    import numpy as np

    try:
        proxy = nibabel.load(str(path)).dataobj  # reads the header only
        claimed = _product(proxy.shape) * np.dtype(proxy.dtype).itemsize
        offset = int(proxy.offset)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a bad header
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise VolumeError(f"{path}: not a readable NIfTI file ({text})") from None
    if path.name.lower().endswith(".gz"):
        return offset + claimed, path, 0, "gzip"
    return claimed, path, offset, "raw"


def _product(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


# ------------------------------------------------------------------------------- NRRD
def _nrrd_claim(path: Path) -> tuple[int, Path | None, int, str]:
    lines, header_end = _text_header(path, lambda ln: ln == "")
    if not lines or not lines[0].startswith("NRRD"):
        return 0, None, 0, "raw"  # not NRRD: SimpleITK's reader reports it
    fields: dict[str, str] = {}
    for ln in lines[1:]:
        if ln.startswith("#") or ":=" in ln or ":" not in ln:
            continue
        key, value = ln.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
        kind = fields["type"].lower()
    except (KeyError, ValueError) as exc:
        raise VolumeError(f"{path}: NRRD header without valid 'sizes'/'type' ({exc})") from None
    if any(s < 0 for s in sizes):
        raise VolumeError(f"{path}: NRRD header has negative sizes {sizes}")
    elem = fields.get("block size") if kind == "block" else None
    itemsize = int(elem) if elem and elem.isdigit() else _nrrd_itemsize(kind)
    claimed = _product(sizes) * itemsize
    encoding = _encoding(fields.get("encoding", "raw").lower())
    if encoding is None:  # text encodings: no byte count to compare
        return claimed, None, 0, "raw"
    datafile = fields.get("data file", fields.get("datafile"))
    byte_skip = _int(fields.get("byte skip", "0"))
    if datafile is None:
        if fields.get("line skip", "0") != "0" or byte_skip:
            return claimed, None, 0, encoding
        return claimed, path, header_end, encoding
    if datafile.startswith("LIST") or "%" in datafile or " " in datafile:
        return claimed, None, 0, encoding
    if fields.get("line skip", "0") != "0":
        return claimed, None, 0, encoding
    return claimed, _relative(path, datafile), -1 if byte_skip == -1 else byte_skip, encoding


def _nrrd_itemsize(kind: str) -> int:
    for key, size in _NRRD_SIZES:
        if key in kind:
            return size
    return 1  # unknown: the smallest size, so the check never refuses a valid file


def _encoding(value: str) -> str | None:
    if value in ("raw",):
        return "raw"
    if value in ("gzip", "gz"):
        return "gzip"
    if value in ("bzip2", "bz2"):
        return "bzip2"
    return None


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _relative(header: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else header.parent / p


# -------------------------------------------------------------------------- MetaImage
def _meta_claim(path: Path) -> tuple[int, Path | None, int, str]:
    lines, header_end = _text_header(path, lambda ln: ln.lower().startswith("elementdatafile"))
    fields: dict[str, str] = {}
    for ln in lines:
        if "=" in ln:
            key, value = ln.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    try:
        dims = [int(float(s)) for s in fields["dimsize"].split()]
        etype = fields["elementtype"].upper().removeprefix("MET_").removesuffix("_ARRAY")
        channels = int(fields.get("elementnumberofchannels", "1"))
        datafile = fields["elementdatafile"]
    except (KeyError, ValueError) as exc:
        raise VolumeError(
            f"{path}: MetaImage header without valid DimSize/ElementType/ElementDataFile ({exc})"
        ) from None
    if any(d < 0 for d in dims) or channels < 1:
        raise VolumeError(f"{path}: MetaImage header has negative sizes {dims}")
    claimed = _product(dims) * max(channels, 1) * _MET_SIZES.get(etype, 1)
    compressed = fields.get("compresseddata", "false").lower() == "true"
    binary = fields.get("binarydata", "true").lower() == "true"
    if not binary:
        return claimed, None, 0, "raw"
    encoding = "zlib" if compressed else "raw"
    header_size = _int(fields.get("headersize", "0"))
    if datafile.upper() == "LOCAL":
        return claimed, path, header_end, encoding
    if datafile.upper().startswith("LIST") or "%" in datafile or " " in datafile:
        return claimed, None, 0, encoding
    return claimed, _relative(path, datafile), -1 if header_size == -1 else header_size, encoding


# ----------------------------------------------------------------------------- common
def _text_header(path: Path, is_last) -> tuple[list[str], int]:
    """The header's lines (decoded as latin-1, stripped) up to and including the first line
    where ``is_last(line)``, and the byte offset just after it."""
    lines: list[str] = []
    with open(path, "rb") as fh:
        while fh.tell() < MAX_HEADER_BYTES:
            raw = fh.readline(MAX_HEADER_BYTES)
            if not raw:
                break
            line = raw.decode("latin-1").rstrip("\r\n").strip()
            if line == "" and not lines:
                continue
            if is_last(line):
                if line:
                    lines.append(line)
                return lines, fh.tell()
            lines.append(line)
    return lines, os.path.getsize(path)


__all__ = ["MAX_COMPRESSION_RATIO", "available_memory", "check_claimed_size"]
