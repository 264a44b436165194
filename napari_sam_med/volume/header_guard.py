"""Check a volume file's header against the bytes on disk BEFORE any voxel is allocated.

A header claims a size (dimensions x element size); SimpleITK allocates that much before it
notices that the file is short, so a 4 KB file claiming 8 GiB could take the machine down.
:func:`check_claimed_size` parses the header itself (NIfTI through nibabel, NRRD and MetaImage
by hand: only the few fields needed) and refuses, naming the file, the claimed size and the
available bytes, when:

* uncompressed data: the file (or the detached data file) holds fewer bytes than claimed;
* text data (NRRD ``ascii``/``hex``, MetaImage ``BinaryData = False``): fewer characters than
  values claimed;
* gzip data (``.nii.gz``, NRRD ``encoding: gzip``): the stream decompresses to fewer bytes than
  claimed (the gzip trailer is checked first; the stream is decompressed, in 64 KiB steps with
  flat memory, only when the trailer disagrees); zlib (MetaImage: ITK pads a short stream with
  zeros without a word) and bzip2 (NRRD) streams are always measured that way;
* any compressed data: the claim exceeds :data:`MAX_COMPRESSION_RATIO` (1032) times the
  compressed bytes (deflate cannot compress more than about 1032:1, so such a claim cannot be
  true) -- this is the documented cap for compressed data, checked without decompressing;
* any data: the claim exceeds the memory the system has available (MemAvailable + free swap).

Missing detached data files are named. File lists and patterns (NRRD ``data file: LIST`` or
``%03d``, MetaImage ``LIST``) are bounded by the bytes of all files beside the header and in the
pattern's folder. Sizes of unknown element types count as one byte, so a valid file is never
refused.
"""

from __future__ import annotations

import bz2
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .geometry import VolumeError

if TYPE_CHECKING:
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.dataobj_images import DataobjImage

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
    claim: _Claim | None
    if kind == "nifti":
        claim = _nifti_claim(path)
    elif kind == "nrrd":
        claim = _nrrd_claim(path)
    elif kind == "metaimage":
        claim = _meta_claim(path)
    else:
        return
    if claim is None:  # not this format at all: the reader reports it
        return
    # what the file holds first (a fact of the file), then what this machine can hold
    if isinstance(claim.data, list):  # several data files: the folder's bytes bound them
        stored = sum(f.stat().st_size for f in claim.data if f.is_file())
        _check_stored(path, claim, stored, " (data files in the header's folder)")
        _check_memory(path, claim.nbytes)
        return
    if not claim.data.is_file():
        raise VolumeError(
            f"{path}: its header names the data file {claim.data}, which does not exist"
        )
    size = claim.data.stat().st_size
    where = "" if claim.data == path else f" (data file {claim.data})"
    _check_stored(path, claim, size - claim.offset if claim.offset >= 0 else size, where)
    _check_memory(path, claim.nbytes)
    if claim.encoding in ("gzip", "zlib", "bzip2"):
        actual = _decompressed_length(claim.data, claim.offset, claim.nbytes, claim.encoding)
        if actual < claim.nbytes:
            raise _short(path, claim.nbytes, actual,
                         f"bytes after decompressing the {claim.encoding} data{where}")  # fmt: skip


@dataclass
class _Claim:
    """What a header claims: ``nbytes`` of voxel data (``elements`` values) stored in ``data``
    (one file from ``offset``, -1 = at its end; or several files) with ``encoding`` (``raw``,
    ``gzip``, ``bzip2``, ``zlib`` or ``text``)."""

    nbytes: int
    elements: int
    data: Path | list[Path]
    offset: int = 0
    encoding: str = "raw"


def _check_stored(path: Path, claim: _Claim, stored: int, where: str) -> None:
    if claim.encoding == "raw" and stored < claim.nbytes:
        raise _short(path, claim.nbytes, stored, "bytes of data on disk" + where)
    if claim.encoding == "text" and stored < claim.elements:  # at least one character each
        raise _short(
            path, claim.nbytes, stored, "characters of text data on disk" + where,
            f" for {claim.elements} values",
        )  # fmt: skip
    if claim.encoding in ("gzip", "bzip2", "zlib"):
        if claim.nbytes > MAX_COMPRESSION_RATIO * max(stored, 1) + 1024:
            raise _short(
                path, claim.nbytes, stored, "compressed bytes on disk" + where,
                f"; {claim.encoding} data cannot expand more than {MAX_COMPRESSION_RATIO}:1",
            )  # fmt: skip


def _short(path: Path, claimed: int, available: int, what: str, note: str = "") -> VolumeError:
    return VolumeError(
        f"{path}: truncated or corrupt: its header claims {claimed} bytes of voxel data "
        f"({_human(claimed)}), but only {available} {what} are available{note}"
    )


def _human(nbytes: int) -> str:
    n = float(nbytes)
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


def _decompressed_length(data: Path, offset: int, claimed: int, encoding: str) -> int:
    """Decompressed length of the stream at ``offset`` (counting stops at ``claimed``), in
    64 KiB steps so memory stays flat; gzip's trailer is tried first."""
    with open(data, "rb") as fh:
        if encoding == "gzip" and os.fstat(fh.fileno()).st_size - max(offset, 0) >= 18:
            fh.seek(-4, os.SEEK_END)  # the stream runs to the end: its trailer holds ISIZE
            if int.from_bytes(fh.read(4), "little") == claimed % 2**32:
                return claimed
        fh.seek(max(offset, 0))
        bzip = encoding == "bzip2"
        # gzip: header auto-detected (wbits 47); zlib: zlib header (MetaImage)
        wbits = 15 if encoding == "zlib" else 47
        dec = bz2.BZ2Decompressor() if bzip else zlib.decompressobj(wbits)
        actual = 0
        try:
            while actual < claimed and not dec.eof:
                if isinstance(dec, bz2.BZ2Decompressor):
                    chunk = fh.read(1 << 16) if dec.needs_input else b""
                    out = dec.decompress(chunk, max_length=1 << 16)
                else:
                    chunk = dec.unconsumed_tail or fh.read(1 << 16)
                    out = dec.decompress(chunk, 1 << 16)
                if not chunk and not out:
                    break
                actual += len(out)
        except (OSError, EOFError, ValueError, zlib.error):
            pass  # a truncated or corrupt stream ends early: `actual` is what could be read
    return actual


# ------------------------------------------------------------------------------ NIfTI
def _nifti_claim(path: Path) -> _Claim:
    import nibabel
    import numpy as np

    try:
        image = cast("DataobjImage", nibabel.load(str(path)))  # NIfTI: Nifti1Image/Nifti2Image
        proxy = cast("ArrayProxy", image.dataobj)  # reads the header only; file-backed: a proxy
        elements = _product(proxy.shape)
        claimed = elements * np.dtype(proxy.dtype).itemsize
        offset = int(proxy.offset)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a bad header
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise VolumeError(f"{path}: not a readable NIfTI file ({text})") from None
    if path.name.lower().endswith(".gz"):
        return _Claim(offset + claimed, elements, path, 0, "gzip")
    return _Claim(claimed, elements, path, offset, "raw")


def _product(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


# ------------------------------------------------------------------------------- NRRD
def _nrrd_claim(path: Path) -> _Claim | None:
    lines, header_end = _text_header(path, lambda ln: ln == "")
    if not lines or not lines[0].startswith("NRRD"):
        return None
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
    elements = _product(sizes)
    claimed = elements * (int(elem) if elem and elem.isdigit() else _nrrd_itemsize(kind))
    encoding = _encoding(fields.get("encoding", "raw").lower())
    datafile = fields.get("data file", fields.get("datafile"))
    if datafile is None:  # attached: line/byte skips only make less data available
        return _Claim(claimed, elements, path, header_end, encoding)
    if datafile.startswith("LIST") or "%" in datafile or " " in datafile:
        return _Claim(claimed, elements, _folder_files(path, datafile), 0, encoding)
    byte_skip = _int(fields.get("byte skip", "0"))
    offset = -1 if byte_skip == -1 else max(byte_skip, 0)
    return _Claim(claimed, elements, _relative(path, datafile), offset, encoding)


def _nrrd_itemsize(kind: str) -> int:
    for key, size in _NRRD_SIZES:
        if key in kind:
            return size
    return 1  # unknown: the smallest size, so the check never refuses a valid file


def _encoding(value: str) -> str:
    if value in ("gzip", "gz"):
        return "gzip"
    if value in ("bzip2", "bz2"):
        return "bzip2"
    if value in ("ascii", "text", "txt", "hex"):
        return "text"
    return "raw"  # raw, or unknown (the reader refuses those)


def _folder_files(header: Path, datafile: str) -> list[Path]:
    """Every file that a LIST / pattern data-file field can name: the files beside the
    header and in the pattern's sub-folder (an upper bound of the data available)."""
    folders = {header.parent, _relative(header, datafile.split()[0]).parent}
    return [f for d in folders if d.is_dir() for f in d.iterdir() if f != header]


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _relative(header: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else header.parent / p


# -------------------------------------------------------------------------- MetaImage
def _meta_claim(path: Path) -> _Claim:
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
    except (KeyError, ValueError, OverflowError) as exc:
        raise VolumeError(
            f"{path}: MetaImage header without valid DimSize/ElementType/ElementDataFile ({exc})"
        ) from None
    if any(d < 0 for d in dims):
        raise VolumeError(f"{path}: MetaImage header has negative sizes {dims}")
    elements = _product(dims) * max(channels, 1)
    claimed = elements * _MET_SIZES.get(etype, 1)
    encoding = "zlib" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    if fields.get("binarydata", "true").lower() != "true":
        encoding = "text"
    if datafile.upper() == "LOCAL":
        return _Claim(claimed, elements, path, header_end, encoding)
    if datafile.upper().startswith("LIST") or "%" in datafile or " " in datafile:
        return _Claim(claimed, elements, _folder_files(path, datafile), 0, encoding)
    header_size = _int(fields.get("headersize", "0"))
    offset = -1 if header_size == -1 else max(header_size, 0)
    return _Claim(claimed, elements, _relative(path, datafile), offset, encoding)


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
