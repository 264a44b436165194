"""Our SAM modules must produce exactly the state-dict keys and shapes of the public checkpoints.

The specs live in ``../shared/spec/state_dict_sam_vit_{b,l,h}.tsv`` beside the repository; the
test is skipped when that directory is absent. Models are built from the registry's own
configurations on the meta device, so no memory is allocated for the weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_sam_med.build import build_model
from napari_sam_med.config import REGISTRY

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"

# The public checkpoint each registry architecture must load (MedSAM has vit_b's keys);
# the sizes come from the registry itself (``napari_sam_med.config.REGISTRY``).
SPEC_FILES = {
    "vit_b": "state_dict_sam_vit_b.tsv",
    "vit_l": "state_dict_sam_vit_l.tsv",
    "vit_h": "state_dict_sam_vit_h.tsv",
    "medsam_vit_b": "state_dict_sam_vit_b.tsv",
    "lite_medsam": "state_dict_lite_medsam.tsv",
    "sam_med_lite": "state_dict_lite_medsam.tsv",  # ours: LiteMedSAM's architecture and keys
}


def read_spec(path: Path) -> dict[str, tuple[int, ...]]:
    """Parse a ``key<TAB>(d0, d1, ...)<TAB>dtype`` table into ``{key: shape}``."""
    spec = {}
    for line in path.read_text().splitlines()[1:]:
        if not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        dims = shape.strip("()").replace(" ", "").split(",")
        spec[key] = tuple(int(d) for d in dims if d)
    return spec


def build_meta_sam(name: str) -> torch.nn.Module:
    """The registry architecture ``name`` on the meta device (no weight memory)."""
    with torch.device("meta"):
        return build_model(REGISTRY[name])


def test_every_public_architecture_has_a_spec() -> None:
    assert set(SPEC_FILES) == set(REGISTRY) - {"tiny"}  # tiny: our random test model


@pytest.mark.parametrize("name", sorted(SPEC_FILES))
def test_state_dict_matches_checkpoint_spec(name: str) -> None:
    spec_file = SPEC_DIR / SPEC_FILES[name]
    if not spec_file.exists():
        pytest.skip(f"checkpoint spec not available: {spec_file}")
    spec = read_spec(spec_file)
    ours = {k: tuple(v.shape) for k, v in build_meta_sam(name).state_dict().items()}
    missing = sorted(set(spec) - set(ours))
    unexpected = sorted(set(ours) - set(spec))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {k: (ours[k], spec[k]) for k in spec if ours[k] != spec[k]}
    assert not wrong, f"shape mismatches (ours, spec): {wrong}"
