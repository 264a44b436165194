"""Option groups and helpers shared by the ``sam-med`` sub-commands: the parent parsers
(``common``, ``model``, ``cache``, volume and output options), the speed and DICOM output
flags, the overwrite rule for a command's outputs, ``--slices`` ranges, and the model and
embedding cache a command's options name."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_MODEL
from ..device import PRECISIONS


def parent_parsers() -> tuple[argparse.ArgumentParser, ...]:
    """The shared option groups: ``common`` (-v, --debug), ``model`` (+ --model, --device,
    --precision/--fast, --preset, --modality, --no-progress) and ``cache`` (--cache-dir,
    --no-disk-cache)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    model = argparse.ArgumentParser(add_help=False, parents=[common])
    model.add_argument("--model", default=DEFAULT_MODEL, help="registry name/checkpoint/ONNX dir")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    add_speed_args(model)  # --precision / --fast
    model.add_argument("--preset", help="intensity preset (default: from the modality)")
    model.add_argument("--modality", help="CT or MR, to guess the preset (manifest: default)")
    model.add_argument("--no-progress", action="store_true", help="no progress bars")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache-dir", type=Path, help="embedding cache (default: user cache)")
    cache.add_argument("--no-disk-cache", action="store_true", help="keep embeddings in memory")
    return common, model, cache


def add_speed_args(model: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|int8`` and its alias ``--fast`` on the model options."""
    model.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                       help="bf16 = fast mode: image encoder under bfloat16 autocast; int8 = "
                            "dynamic int8 transformer linears (TinyViT models, CPU)")  # fmt: skip
    model.add_argument("--fast", dest="precision", action="store_const", const="bf16",
                       help="same as --precision bf16")  # fmt: skip


OUTPUT_FORMATS = ("seg", "rtstruct")


def add_output_args(s: argparse.ArgumentParser) -> None:
    """``--format`` and ``--overwrite`` for ``sam-med segment``."""
    s.add_argument("--format", choices=OUTPUT_FORMATS,
                   help="write DICOM SEG or RTSTRUCT (-o FILE.dcm; the image must be a DICOM "
                        "series); default: by the output's suffix")  # fmt: skip
    if "--overwrite" not in s._option_string_actions:  # a CLI-wide flag may already exist
        s.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def volume_options() -> argparse.ArgumentParser:
    """Parent parser with ``--series-uid``, ``--component`` (which volume of a file) and
    ``--nonfinite-fill``."""
    v = argparse.ArgumentParser(add_help=False)
    v.add_argument("--series-uid", help="DICOM folder with several series: the one to read")
    v.add_argument("--component", type=int, metavar="K",
                   help="4D / multi-component file: the volume to read, from 0")  # fmt: skip
    v.add_argument("--nonfinite-fill", type=float, metavar="VALUE",
                   help="replace NaN/Inf voxels with VALUE (default: refuse the file)")  # fmt: skip
    return v


def output_options() -> argparse.ArgumentParser:
    """Parent parser with ``--overwrite`` (replace existing output files)."""
    o = argparse.ArgumentParser(add_help=False)
    o.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: refuse, naming the file)")  # fmt: skip
    return o


def claim_outputs(overwrite: bool, *paths: Path) -> tuple[Path, ...]:
    """Apply the overwrite rule to a command's output files before any work; returns them."""
    from ..outputs import check_output

    for path in paths:
        check_output(path, overwrite)
    return paths


def slice_range(slices: list[int] | None, depth: int | None = None) -> list[int] | None:
    """The slices of an inclusive ``--slices Z0 Z1`` (None: all); a usage error when the range
    is inverted or empty, or (with ``depth``) lies outside ``0..depth-1``."""
    if slices is None:
        return None
    z0, z1 = slices
    if z0 > z1 or z0 < 0:
        raise ValueError(
            f"command line: --slices {z0} {z1} is an empty range; expected 0 <= Z0 <= Z1 "
            "(both inclusive)"
        )
    if depth is not None and z1 >= depth:
        raise ValueError(
            f"command line: --slices {z0} {z1} is outside the volume's slices 0..{depth - 1}"
        )
    return list(range(z0, z1 + 1))


def load_model(args: argparse.Namespace, local_rank: int | None = None):
    """The model named by ``--model`` on ``--device`` (one GPU per torchrun rank), at
    ``--precision`` (a registry name, checkpoint file or ONNX export folder)."""
    from ..backends import load_model as load_backend
    from ..device import resolve_device

    device = args.device
    if local_rank is not None and device in ("auto", "cuda"):
        # one GPU per torchrun rank; CPU-only ranks keep resolve_device's choice
        if resolve_device("auto").type == "cuda":
            device = f"cuda:{local_rank}"
    precision = getattr(args, "precision", None)
    return load_backend(args.model, device=resolve_device(device), precision=precision)


def model_cache(args: argparse.Namespace):
    """The embedding cache chosen by ``--cache-dir`` / ``--no-disk-cache``."""
    from ..volume.cache import EmbeddingCache, default_cache_dir

    if getattr(args, "no_disk_cache", False):
        return EmbeddingCache(None)
    return EmbeddingCache(args.cache_dir or default_cache_dir())
