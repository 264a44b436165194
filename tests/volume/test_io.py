"""Volume IO: geometry-preserving round trips, atomic writes, index/world maths, every error."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from napari_sam_med.errors import OutputExistsError
from napari_sam_med.volume.io import (
    Volume,
    VolumeError,
    check_label_matches,
    index_in_grid,
    index_to_world,
    read_volume,
    world_to_index,
    world_to_nearest_index,
    write_labels,
    write_volume,
)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, cy, cz, sx, sy, sz = np.cos([ax, ay, az]).tolist() + np.sin([ax, ay, az]).tolist()
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture()
def oblique() -> Volume:
    """A small int16 volume with awkward spacing, origin and an oblique direction."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 60
    direction = tuple(_rotation(0.2, -0.3, 0.5).ravel())
    return Volume(array, (0.976562, 0.7, 3.27), (-23.437616, -86.914146, -881.32), direction)


# Tolerances (mm / cosine): NIfTI headers store float32, NRRD writes doubles in text,
# MetaImage round trips exactly.
ROUND_TRIP_ATOL = {".nii.gz": 1e-4, ".nii": 1e-4, ".nrrd": 1e-12, ".mha": 0.0}


@pytest.mark.parametrize("suffix", sorted(ROUND_TRIP_ATOL))
def test_round_trip_keeps_geometry(tmp_path: Path, oblique: Volume, suffix: str) -> None:
    path = write_volume(oblique, tmp_path / f"vol{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, oblique.array)
    assert back.array.dtype == np.int16
    atol = ROUND_TRIP_ATOL[suffix]
    for attr in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(back, attr), getattr(oblique, attr), rtol=0, atol=atol)
    assert back.path == path
    check_label_matches(back, oblique)


def test_metaimage_round_trip_is_bit_exact(tmp_path: Path, oblique: Volume) -> None:
    back = read_volume(write_volume(oblique, tmp_path / "vol.mha"))
    assert (back.spacing, back.origin, back.direction) == (
        oblique.spacing,
        oblique.origin,
        oblique.direction,
    )


def test_nifti_world_matches_nibabel(tmp_path: Path, oblique: Volume) -> None:
    """Our LPS world equals nibabel's RAS affine with x and y negated."""
    path = write_volume(oblique, tmp_path / "vol.nii.gz")
    affine = nibabel.load(str(path)).affine
    ijk = np.array([[0, 0, 0], [5, 4, 3], [1.5, 2.25, 0.5]])
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(index_to_world(oblique, ijk), ras * [-1, -1, 1], atol=1e-3)


def test_write_labels_on_reference_grid(tmp_path: Path, oblique: Volume) -> None:
    labels = np.zeros(oblique.array.shape, dtype=np.int64)
    labels[1:3, 2:4, 3:5] = 2
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        back = read_volume(write_labels(labels, oblique, tmp_path / f"lab{suffix}"))
        assert back.array.dtype == np.uint8
        np.testing.assert_array_equal(back.array, labels)
        check_label_matches(back, oblique)
    big = read_volume(write_labels(labels * 1000, oblique, tmp_path / "big.mha"))
    assert big.array.dtype == np.uint16
    boolean = read_volume(write_labels(labels > 0, oblique, tmp_path / "bool.mha"))
    np.testing.assert_array_equal(boolean.array, (labels > 0).astype(np.uint8))


def test_atomic_write_leaves_no_temp_file(tmp_path: Path, oblique: Volume) -> None:
    target = tmp_path / "lab.nii.gz"
    write_labels(np.ones(oblique.array.shape, np.uint8), oblique, target)
    with pytest.raises(OutputExistsError, match=r"lab\.nii\.gz: already exists"):
        write_labels(np.zeros(oblique.array.shape, np.uint8), oblique, target)
    write_labels(np.zeros(oblique.array.shape, np.uint8), oblique, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.nii.gz"]
    assert read_volume(target).array.max() == 0
    assert os.stat(target).st_mode & 0o044, "written file should be readable by others (umask)"


def test_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, oblique: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "lab.mha"
    write_labels(np.ones(oblique.array.shape, np.uint8), oblique, target)

    def broken_write(image, name, *args):
        Path(name).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(VolumeError, match=r"lab\.mha: writing failed \(disk full\)"):
        write_labels(np.zeros(oblique.array.shape, np.uint8), oblique, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.mha"]
    monkeypatch.undo()
    assert read_volume(target).array.min() == 1


def test_write_errors(tmp_path: Path, oblique: Volume) -> None:
    shape = oblique.array.shape
    with pytest.raises(VolumeError, match=r"label shape \(4, 5, 7\).*shape \(4, 5, 6\)"):
        write_labels(np.zeros((4, 5, 7), np.uint8), oblique, tmp_path / "a.nii.gz")
    with pytest.raises(VolumeError, match="cannot write '.png'"):
        write_labels(np.zeros(shape, np.uint8), oblique, tmp_path / "a.png")
    with pytest.raises(VolumeError, match="cannot write '.mhd'"):
        write_labels(np.zeros(shape, np.uint8), oblique, tmp_path / "a.mhd")
    with pytest.raises(VolumeError, match="does not exist"):
        write_labels(np.zeros(shape, np.uint8), oblique, tmp_path / "nope" / "a.nii.gz")
    with pytest.raises(VolumeError, match="labels must be integers"):
        write_labels(np.full(shape, 0.5), oblique, tmp_path / "a.nii.gz")
    assert list(tmp_path.iterdir()) == []


# --- index <-> world --------------------------------------------------------------------------


def test_index_world_hand_computed() -> None:
    vol = Volume(np.zeros((3, 4, 5)), spacing=(2.0, 3.0, 4.0), origin=(10.0, 20.0, 30.0))
    np.testing.assert_allclose(index_to_world(vol, [1, 1, 1]), [12.0, 23.0, 34.0])
    np.testing.assert_allclose(world_to_index(vol, [13.0, 20.0, 26.0]), [1.5, 0.0, -1.0])
    # Flip x and y (an LPS -> RAS-like direction): columns of the matrix are the axes.
    flipped = Volume(vol.array, vol.spacing, vol.origin, (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    np.testing.assert_allclose(index_to_world(flipped, [1, 2, 0]), [8.0, 14.0, 30.0])
    # Swap i and j: i moves along world y, j along world x.
    swapped = Volume(vol.array, vol.spacing, vol.origin, (0, 1, 0, 1, 0, 0, 0, 0, 1))
    np.testing.assert_allclose(index_to_world(swapped, [1, 0, 0]), [10.0, 22.0, 30.0])


def test_index_world_agrees_with_simpleitk(oblique: Volume) -> None:
    image = sitk.GetImageFromArray(oblique.array)
    image.SetSpacing(oblique.spacing)
    image.SetOrigin(oblique.origin)
    image.SetDirection(oblique.direction)
    ijk = np.array([[0, 0, 0], [5, 4, 3], [2.4, 1.25, 0.75]])
    expected = [image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk]
    np.testing.assert_allclose(index_to_world(oblique, ijk), expected, atol=1e-9)
    np.testing.assert_allclose(world_to_index(oblique, expected), ijk, atol=1e-9)
    nearest = world_to_nearest_index(oblique, expected[2])
    assert nearest.dtype == np.int64 and nearest.tolist() == [2, 1, 1]
    for point in expected:
        itk_index = image.TransformPhysicalPointToIndex(point)
        assert itk_index == tuple(world_to_nearest_index(oblique, point).tolist())


def test_index_in_grid_and_shapes(oblique: Volume) -> None:
    assert oblique.shape_xyz == (6, 5, 4)
    assert index_in_grid(oblique, [5, 4, 3]) is True
    assert index_in_grid(oblique, [6, 0, 0]) is False
    np.testing.assert_array_equal(index_in_grid(oblique, [[0, 0, 0], [0, -1, 0]]), [True, False])
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(N, 3\)"):
        index_to_world(oblique, [1, 2])


def test_volume_validates_itself() -> None:
    with pytest.raises(VolumeError, match="expected a 3D"):
        Volume(np.zeros((4, 5)))
    with pytest.raises(VolumeError, match="spacing must be positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(VolumeError, match="direction needs 9 values"):
        Volume(np.zeros((2, 2, 2)), direction=(1, 0, 0))
    with pytest.raises(VolumeError, match="singular"):
        Volume(np.zeros((2, 2, 2)), direction=(1, 0, 0, 1, 0, 0, 0, 0, 1))


# --- label / image checks -----------------------------------------------------------------------


def test_check_label_matches_names_every_fault(oblique: Volume) -> None:
    label = Volume(
        np.zeros((4, 5, 7), np.uint8),
        spacing=(1.0, 0.7, 3.27),
        origin=(0.0, -86.914146, -881.32),
        direction=oblique.direction,
        path=Path("lab.nii.gz"),
    )
    with pytest.raises(VolumeError) as info:
        check_label_matches(label, oblique)
    message = str(info.value)
    for part in ("lab.nii.gz", "shape (z, y, x) (4, 5, 7) != (4, 5, 6)", "spacing", "origin"):
        assert part in message
    assert "direction" not in message
    floats = oblique.with_array(np.full(oblique.array.shape, 0.5, np.float32))
    with pytest.raises(VolumeError, match="non-integer"):
        check_label_matches(floats, oblique)


# --- read errors --------------------------------------------------------------------------------


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"missing\.nii\.gz: no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    with pytest.raises(VolumeError, match=r"picture\.png: unsupported file type '\.png'"):
        read_volume(tmp_path / "picture.png")


def test_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "garbage.nrrd").write_text("hello")
    with pytest.raises(VolumeError, match=r"garbage\.nrrd: cannot read the nrrd file"):
        read_volume(tmp_path / "garbage.nrrd")
    (tmp_path / "garbage.nii.gz").write_text("hello")
    with pytest.raises(VolumeError, match=r"garbage\.nii\.gz: not a readable NIfTI"):
        read_volume(tmp_path / "garbage.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(10, 20, 30)).astype(np.float32))
    path = write_volume(vol, tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    pattern = "truncated" if suffix.startswith(".nii") else "truncated or corrupt"
    with pytest.raises(VolumeError, match=re.escape(f"cut{suffix}: ") + f".*{pattern}"):
        read_volume(path)


def test_4d_needs_component(tmp_path: Path) -> None:
    data = np.stack([np.full((6, 5, 4), t, np.float32) for t in range(3)], axis=-1)
    path = tmp_path / "four.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
    with pytest.raises(VolumeError) as info:
        read_volume(path)
    assert "four.nii.gz: holds 3 volumes" in str(info.value)
    assert "--component K (read_volume(path, component=K)), K in 0..2" in str(info.value)
    vol = read_volume(path, component=2)
    assert vol.array.shape == (4, 5, 6) and np.all(vol.array == 2)
    assert vol.spacing == (2.0, 3.0, 4.0) and vol.metadata["n_components"] == 3
    with pytest.raises(VolumeError, match=r"component=3 out of range 0\.\.2"):
        read_volume(path, component=3)


def test_vector_pixels_need_component(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6 * 2).reshape(4, 5, 6, 2), isVector=True)
    path = tmp_path / "vec.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(VolumeError, match="holds 2 volumes .2 components per voxel"):
        read_volume(path)
    assert read_volume(path, component=1).array[0, 0, 0] == 1


def test_single_volume_component(tmp_path: Path, oblique: Volume) -> None:
    path = write_volume(oblique, tmp_path / "one.mha")
    assert read_volume(path, component=0).array.shape == (4, 5, 6)
    with pytest.raises(VolumeError, match="holds one volume; component=1"):
        read_volume(path, component=1)


def test_nonfinite_voxels(tmp_path: Path) -> None:
    array = np.zeros((3, 4, 5), np.float32)
    array[0, 0, 0], array[1, 1, 1], array[2, 2, 2] = np.nan, np.nan, np.inf
    path = write_volume(Volume(array), tmp_path / "bad.nrrd")
    with pytest.raises(VolumeError) as info:
        read_volume(path)
    assert "bad.nrrd: 3 of 60 voxels are not finite (2 NaN, 1 Inf)" in str(info.value)
    assert np.isnan(read_volume(path, allow_nonfinite=True).array[0, 0, 0])


def test_two_dimensional_file_becomes_one_slice(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.ones((7, 8), np.int16))
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(tmp_path / "flat.mha"))
    vol = read_volume(tmp_path / "flat.mha")
    assert vol.array.shape == (1, 7, 8) and vol.spacing[:2] == (0.5, 0.25)
