"""ONNX export and the onnxruntime backend: fidelity, dynamic prompts, refusals, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the 'onnx' extra is not installed")
pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")

from napari_sam_med import SamPredictor, build_sam, save_checkpoint  # noqa: E402
from napari_sam_med.cli import main  # noqa: E402
from napari_sam_med.onnx_export import export_onnx  # noqa: E402
from napari_sam_med.onnx_runtime import OnnxSam, validate_export  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_sam("tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory) -> Path:
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "tiny_onnx")


def test_export_writes_two_files_with_metadata(tiny_export: Path, tiny) -> None:
    assert sorted(p.name for p in tiny_export.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    ort = OnnxSam(tiny_export)
    assert ort.metadata["model_name"] == "tiny"
    assert ort.metadata["img_size"] == str(tiny.config.img_size)
    assert len(ort.metadata["weights_sha256"]) == 64
    assert ort.config == tiny.config
    assert not list(tiny_export.parent.glob(".*tmp"))  # no temporary folder left


@pytest.mark.parametrize("n_points", [1, 3, 6])
def test_dynamic_point_counts_match_torch(tiny_export: Path, tiny, n_points: int) -> None:
    ort = OnnxSam(tiny_export)
    gen = torch.Generator().manual_seed(n_points)
    s = tiny.config.img_size
    emb = ort.encode_image(torch.rand(1, 3, s, s, generator=gen))
    coords = torch.rand(2, n_points, 2, generator=gen) * (s - 1)
    labels = torch.randint(0, 2, (2, n_points), generator=gen)
    boxes = torch.tensor([[10.0, 12.0, 40.0, 50.0], [5.0, 5.0, 20.0, 30.0]])
    for kwargs in ({"points": (coords, labels)}, {"points": (coords, labels), "boxes": boxes}):
        for multi in (False, True):
            with torch.inference_mode():
                low, iou = tiny.decode(emb, multimask_output=multi, **kwargs)
            low_o, iou_o = ort.decode(emb, multimask_output=multi, **kwargs)
            m = 4 * tiny.config.image_embedding_size
            assert low_o.shape == low.shape == (2, 3 if multi else 1, m, m)
            assert torch.allclose(low_o, low, atol=1e-4, rtol=1e-4)
            assert torch.allclose(iou_o, iou, atol=1e-5)


def test_predictor_on_onnx_backend_matches_torch(tiny_export: Path, tiny) -> None:
    image = np.random.default_rng(1).uniform(0, 255, (40, 52)).astype(np.float32)
    ref, onx = SamPredictor(tiny), SamPredictor(OnnxSam(tiny_export))
    ref.set_image(image)
    onx.set_image(image)
    box = np.array([5.0, 6.0, 30.0, 33.0])
    m1, i1, l1 = ref.predict(box=box, multimask_output=False)
    m2, i2, l2 = onx.predict(box=box, multimask_output=False)
    assert np.abs(l1 - l2).max() <= 1e-3 * np.abs(l1).max()
    assert (m1 == m2).mean() > 0.999
    assert np.allclose(i1, i2, atol=1e-5)


def test_text_prompt_on_onnx_backend_is_a_clear_error(tiny_export: Path) -> None:
    """An export of a text-trained model has ``config.text_dim`` but no text prompt encoder."""
    import dataclasses

    from napari_sam_med.errors import PromptError

    ort = OnnxSam(tiny_export)
    ort.config = dataclasses.replace(ort.config, text_dim=8)
    predictor = SamPredictor(ort)
    predictor.set_image(np.random.default_rng(2).uniform(0, 255, (40, 52)).astype(np.float32))
    with pytest.raises(PromptError, match="text prompts need the PyTorch model; OnnxSam"):
        predictor.predict(box=np.array([5.0, 6.0, 30.0, 33.0]), text=np.ones(8, np.float32))


def test_onnx_model_id_needs_its_file(tiny_export: Path, tmp_path: Path) -> None:
    from napari_sam_med.volume.cache import encoder_weights_id, model_weights_id

    ort = OnnxSam(tiny_export)
    assert encoder_weights_id(ort) == f"enc-{model_weights_id(ort)}"  # keyed by its file
    ort.checkpoint_path = str(tmp_path / "gone.onnx")
    with pytest.raises(ValueError, match="OnnxSam: its weights file .*gone.onnx.* is gone"):
        model_weights_id(ort)


def test_refuses_existing_path_and_overwrites_on_request(tiny, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(tiny, out, validate=False)
    assert (out / "keep.txt").read_text() == "user file"
    export_onnx(tiny, out, overwrite=True, validate=False)
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx"]


def test_failed_validation_leaves_nothing(tiny, tmp_path: Path, monkeypatch) -> None:
    import napari_sam_med.onnx_export as onnx_export

    def fail(*_a, **_k):
        raise ValueError("mismatch")

    monkeypatch.setattr(onnx_export, "validate_export", fail)
    with pytest.raises(ValueError, match="mismatch"):
        export_onnx(tiny, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_is_a_clear_error(tiny, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="a_file"):
        export_onnx(tiny, blocker / "out", validate=False)


def _set_meta(path: Path, key: str, value: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
    onnx.save(proto, str(path))


def test_mismatching_files_are_refused(tiny, tiny_export: Path, tmp_path: Path) -> None:
    import shutil

    import onnx

    # a decoder from other weights beside this encoder
    torch.manual_seed(1)
    other = export_onnx(build_sam("tiny", device="cpu"), tmp_path / "other", validate=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_export, mixed)
    shutil.copy(other / "decoder.onnx", mixed / "decoder.onnx")
    with pytest.raises(ValueError, match="different models"):
        OnnxSam(mixed)
    # metadata edited to claim other weights: the graph checksum still binds them
    edited = tmp_path / "edited"
    shutil.copytree(tiny_export, edited)
    proto = onnx.load(str(edited / "encoder.onnx"))
    init = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(edited / "encoder.onnx"))
    with pytest.raises(ValueError, match="does not match the model"):
        OnnxSam(edited)
    with pytest.raises(ValueError, match="not the expected"):
        OnnxSam(tiny_export, expected_weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="not an ONNX export"):
        OnnxSam(tmp_path)


def test_cli_export_onnx_and_bad_checkpoint(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_sam("tiny", device="cpu", inference=False), tmp_path / "t.pt")
    out = tmp_path / "exported"
    assert main(["export-onnx", "--model", str(ckpt), "-o", str(out)]) == 0
    assert "validated" in capsys.readouterr().out
    assert OnnxSam(out).metadata["source"] == str(ckpt)
    assert main(["export-onnx", "--model", str(ckpt), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export-onnx", "--model", str(bad), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam-med: error:") and "bad.pt" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_lite_medsam_export_on_real_slices(lite_medsam, tmp_path: Path, shared_data_or_none):
    from napari_sam_med.preprocessing import apply_intensity
    from napari_sam_med.volume.io import read_volume
    from tests.conftest import SAMPLE_DATA

    vol = read_volume(SAMPLE_DATA / "ct_phantom.nii.gz")
    out = export_onnx(lite_medsam, tmp_path / "lite", validate=False)
    slices = [apply_intensity(vol.array, "ct_soft_tissue")[22]]
    if shared_data_or_none is not None:
        slices += _shared_slices(shared_data_or_none)
    for image in slices:
        worst = validate_export(lite_medsam, out, image=image)
        assert worst["embedding"] < 1e-4 and worst["logits"] < 1e-3
        assert worst["mask_iou"] >= 0.99


def _shared_slices(root: Path) -> list[np.ndarray]:
    from napari_sam_med.preprocessing import apply_intensity
    from napari_sam_med.volume.io import read_volume

    files = sorted(root.glob("ibsi_sts/*/CT_image.nii.gz"))[:1]
    out = []
    for f in files:
        arr = read_volume(f).array
        out.append(apply_intensity(arr, "ct_soft_tissue")[arr.shape[0] // 2])
    return out


@pytest.fixture
def shared_data_or_none():
    """``../shared/data`` when present (the phantom slice is checked either way)."""
    from tests.conftest import SHARED_DATA

    return SHARED_DATA if SHARED_DATA.is_dir() else None
