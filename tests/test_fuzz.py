"""Property-based fuzzing (hypothesis) of everything that reads user input.

The property, for every generated input: it works, or it raises OUR error type
(:class:`napari_sam_med.errors.SamMedError`, a ``ValueError``) with a message naming the file or
the value -- never another exception type. Reading header files must also stay within a set
memory budget. Sizes: the ``max_examples`` below add up to more than 2,000 inputs per run
(:func:`test_zz_enough_inputs_ran` checks the count); the module takes about a minute on CPU.

CI draws the same inputs every run (``derandomize``), so it never turns red by chance; set
``SAM_MED_FUZZ_RANDOM=1`` to explore new inputs (do it after changing a reader or validator).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from napari_sam_med.errors import PromptError, SamMedError
from napari_sam_med.predictor import SamPredictor
from napari_sam_med.volume.geometry import Volume
from napari_sam_med.volume.io import read_volume
from napari_sam_med.volume.manifest import load_manifest
from napari_sam_med.volume.voxel_prompts import object_prompts

RAN: Counter[str] = Counter()
MEMORY_BUDGET_MB = 200
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=not os.environ.get("SAM_MED_FUZZ_RANDOM"),  # CI: the same inputs every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _must_name(exc: BaseException, *names: str) -> None:
    assert isinstance(exc, SamMedError), f"{type(exc).__name__}: {exc}"
    assert any(n in str(exc) for n in names), f"message names none of {names}: {exc}"


def _read(path: Path) -> None:
    try:
        vol = read_volume(path)
    except SamMedError as exc:
        _must_name(exc, str(path), path.name)
    else:
        assert vol.array.ndim == 3


# ---------------------------------------------------------------------------------- readers
DTYPES = {"uchar": ("MET_UCHAR", "uint8"), "short": ("MET_SHORT", "int16"),
          "float": ("MET_FLOAT", "float32"), "double": ("MET_DOUBLE", "float64"),
          "int": ("MET_INT", "int32"), "ushort": ("MET_USHORT", "uint16")}  # fmt: skip
SIZES = st.lists(
    st.one_of(st.integers(0, 6), st.integers(0, 10**7), st.sampled_from([-1, 2**31, 2**62])),
    min_size=0, max_size=5,
)  # fmt: skip
ENC = st.sampled_from(["raw", "gzip", "bzip2", "ascii", "zz"])


def _payload(n: int, encoding: str, cut: float, junk: bytes) -> bytes:
    raw = np.random.default_rng(n).integers(0, 255, min(n, 1 << 16), dtype=np.uint8).tobytes()
    if encoding == "gzip":
        raw = gzip.compress(raw)
    elif encoding == "zlib":
        raw = zlib.compress(raw)
    return raw[: int(len(raw) * cut)] + junk


@settings(FUZZ, max_examples=450)
@given(sizes=SIZES, dtype=st.sampled_from(sorted(DTYPES)), encoding=ENC,
       nbytes=st.integers(0, 5000), cut=st.floats(0, 1), junk=st.binary(max_size=40),
       extra=st.sampled_from(["", "endian: big\n", "data file: other.raw\n", "byte skip: -1\n",
                              "line skip: 3\n", "kinds: vector domain domain domain\n"]),
       version=st.sampled_from(["NRRD0004", "NRRD0001", "NRRD", "nrrd0004", ""]))  # fmt: skip
def test_fuzz_nrrd_headers(tmp_path, sizes, dtype, encoding, nbytes, cut, junk, extra, version):
    RAN["nrrd"] += 1
    head = (f"{version}\ntype: {dtype}\ndimension: {len(sizes)}\n"
            f"sizes: {' '.join(map(str, sizes))}\nencoding: {encoding}\n{extra}\n")  # fmt: skip
    path = tmp_path / "fuzz.nrrd"
    path.write_bytes(head.encode() + _payload(nbytes, encoding, cut, junk))
    (tmp_path / "other.raw").write_bytes(b"\0" * (nbytes // 2))
    _read(path)


@settings(FUZZ, max_examples=450)
@given(dims=SIZES, dtype=st.sampled_from(sorted(DTYPES)), compressed=st.booleans(),
       nbytes=st.integers(0, 5000), cut=st.floats(0, 1), junk=st.binary(max_size=40),
       channels=st.integers(0, 4), datafile=st.sampled_from(["LOCAL", "d.raw", "gone.raw",
                                                             "LIST", "x%03d.raw"]),
       suffix=st.sampled_from([".mha", ".mhd"]),
       extra=st.sampled_from(["", "HeaderSize = -1\n", "HeaderSize = 99999\n",
                              "BinaryData = False\n", "ElementSpacing = 0 1 nan\n"]))  # fmt: skip
def test_fuzz_metaimage_headers(
    tmp_path, dims, dtype, compressed, nbytes, cut, junk, channels, datafile, suffix, extra
):
    RAN["metaimage"] += 1
    head = (f"ObjectType = Image\nNDims = {len(dims)}\nDimSize = {' '.join(map(str, dims))}\n"
            f"ElementType = {DTYPES[dtype][0]}\nElementNumberOfChannels = {channels}\n"
            f"CompressedData = {compressed}\n{extra}ElementDataFile = {datafile}\n")  # fmt: skip
    data = _payload(nbytes, "zlib" if compressed else "raw", cut, junk)
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(head.encode() + (data if datafile == "LOCAL" else b""))
    (tmp_path / "d.raw").write_bytes(data)
    _read(path)


@settings(FUZZ, max_examples=300)
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=5),
       dtype=st.sampled_from(["uint8", "int16", "float32", "float64", "int64"]),
       claim=st.one_of(st.none(), st.lists(st.integers(1, 2**15 - 1), min_size=1, max_size=5)),
       nonfinite=st.integers(0, 3), cut=st.floats(0.2, 1), gz=st.booleans(),
       flip=st.one_of(st.none(), st.integers(0, 400)))  # fmt: skip
def test_fuzz_nifti(tmp_path, shape, dtype, claim, nonfinite, cut, gz, flip):
    import nibabel

    RAN["nifti"] += 1
    data = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    if nonfinite and data.dtype.kind == "f" and data.size:
        data.flat[:nonfinite] = [np.nan, np.inf, -np.inf][:nonfinite]
    img = nibabel.Nifti1Image(data, np.eye(4), dtype=data.dtype)
    if claim is not None:  # the header claims another shape than the data it holds
        img.header.set_data_shape(claim)
    raw = bytearray(img.header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    if flip is not None and flip < len(raw):
        raw[flip] ^= 0xFF
    raw = bytes(raw[: max(1, int(len(raw) * cut))])
    path = tmp_path / ("fuzz.nii.gz" if gz else "fuzz.nii")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    _read(path)


def test_fuzz_readers_memory() -> None:
    """While the reader fuzzers above ran, this process's peak RSS stayed within the budget
    above its size when they started (the peak is reset through /proc/self/clear_refs)."""
    if not RAN["nrrd"] or "start" not in BASELINE:
        pytest.skip("run with the reader fuzzers (Linux)")
    grew = _peak_mb() - BASELINE["start"]
    assert grew < MEMORY_BUDGET_MB, f"peak RSS grew by {grew:.0f} MB while reading fuzzed headers"


BASELINE: dict[str, float] = {}


@pytest.fixture(autouse=True)
def _memory_baseline(request):
    """Before the first reader fuzzer: reset the peak-RSS mark, remember the current RSS."""
    if request.node.name.startswith("test_fuzz_") and "memory" not in request.node.name:
        if "start" not in BASELINE and request.node.name.split("[")[0] in READERS:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                BASELINE["start"] = _rss_mb()
            except OSError:
                pass
    yield


READERS = {"test_fuzz_nrrd_headers", "test_fuzz_metaimage_headers", "test_fuzz_nifti"}


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------------------------- manifest
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)),
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(
        st.sampled_from(["cases", "image", "objects", "box3d", "box", "slice", "points",
                         "point_labels", "label", "space", "output", "name", "text",
                         "text_slices", "component", "series_uid", "modality", "preset", "x"]),
        kids, max_size=6),
    max_leaves=40,
)  # fmt: skip
NEAR = st.fixed_dictionaries({
    "cases": st.lists(st.fixed_dictionaries({
        "image": st.sampled_from(["ct.nii.gz", "", "../x", "a/b.nrrd", "ct.txt"]),
        "objects": st.lists(st.fixed_dictionaries({}, optional={
            "box3d": st.lists(st.floats(-1e3, 1e3) | st.integers(-5, 50) | st.text(max_size=2),
                              max_size=7),
            "box": st.lists(st.integers(-5, 50) | st.floats(), max_size=5),
            "slice": st.integers(-5, 50) | st.floats() | st.none(),
            "points": st.lists(st.lists(st.integers(-5, 50) | st.floats(), max_size=4), max_size=4),
            "point_labels": st.lists(st.integers(-1, 2), max_size=4),
            "label": st.integers(-1, 70000) | st.floats() | st.booleans(),
            "space": st.sampled_from(["voxel", "world", "mm"]),
            "text": st.text(max_size=5), "text_slices": st.lists(st.integers(-3, 40), max_size=3),
        }), max_size=3),
    }, optional={"component": st.integers(-2, 3) | st.text(max_size=2),
                 "output": st.sampled_from(["o.nii.gz", "o.png", "", "sub/o.mha"])}),
        max_size=3),
}, optional={"space": st.sampled_from(["voxel", "world", 3])})  # fmt: skip


@settings(FUZZ, max_examples=450)
@given(data=st.one_of(JSON, NEAR, NEAR), encoding=st.sampled_from(["json", "bytes"]),
       noise=st.binary(max_size=30))  # fmt: skip
def test_fuzz_manifest(tmp_path, data, encoding, noise):
    RAN["manifest"] += 1
    path = tmp_path / "fuzz.json"
    text = json.dumps(data) if encoding == "json" else None
    path.write_bytes(text.encode() if text is not None else noise)
    volume = Volume(np.zeros((20, 30, 40), np.int16), spacing=(0.5, 0.5, 2.0))
    try:
        cases = load_manifest(path, tmp_path / "out")
        for case in cases:
            for obj in case.objects:
                object_prompts(obj, volume)
    except SamMedError as exc:
        _must_name(exc, "fuzz.json")


# -------------------------------------------------------------------------------- prompts
@pytest.fixture(scope="module")
def predictor(tiny_model) -> SamPredictor:
    p = SamPredictor(tiny_model)
    p.set_image(np.random.default_rng(0).uniform(0, 255, (40, 56)).astype(np.float32))
    return p


NUM = st.one_of(st.integers(-100, 100), st.floats(-1e3, 1e3), st.floats(allow_nan=True),
                st.sampled_from(["1", None, True]))  # fmt: skip
ARRAYISH = st.one_of(
    st.none(), st.lists(NUM, max_size=6), st.lists(st.lists(NUM, max_size=5), max_size=4),
    st.lists(st.lists(st.lists(NUM, max_size=3), max_size=2), max_size=2), NUM,
)


@settings(FUZZ, max_examples=450)
@given(coords=ARRAYISH, labels=ARRAYISH, box=ARRAYISH,
       mask=st.sampled_from([None, (16, 16), (1, 16, 16), (32, 32), (2, 3)]),
       multimask=st.booleans())  # fmt: skip
def test_fuzz_prompts(predictor, coords, labels, box, mask, multimask):
    RAN["prompts"] += 1
    mask_input = None if mask is None else np.zeros(mask, np.float32)
    try:
        masks, iou, _ = predictor.predict(coords, labels, box, mask_input, multimask)
    except PromptError as exc:
        _must_name(exc, "point_coords", "point_labels", "box", "mask_input", "prompt")
    else:
        assert masks.shape[1:] == (40, 56) and len(iou) == masks.shape[0]


# ---------------------------------------------------------------------------- checkpoints
class _Calls:
    """Unpickling this calls ``print`` (harmless if it ever ran; it must not)."""

    def __reduce__(self):
        return (print, ("a fuzzed checkpoint ran code",))


PICKLABLE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
              st.binary(max_size=8)),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                               max_size=4)
    | st.tuples(kids, kids),
    max_leaves=12,
)  # fmt: skip


@settings(FUZZ, max_examples=350)
@given(kind=st.sampled_from(["bytes", "pickle", "torch", "torch_cut", "code"]),
       obj=PICKLABLE, raw=st.binary(max_size=2000), protocol=st.integers(0, 5),
       cut=st.floats(0, 1), flip=st.integers(0, 5000))  # fmt: skip
def test_fuzz_checkpoints(tmp_path, kind, obj, raw, protocol, cut, flip):
    import torch

    from napari_sam_med.build import build_sam

    RAN["checkpoints"] += 1
    if kind == "bytes":
        data = raw
    elif kind == "code":  # a pickle that calls a function: must be refused, never run
        data = pickle.dumps(_Calls(), protocol=protocol)
    elif kind == "pickle":
        data = pickle.dumps(obj, protocol=protocol)
    else:
        buf = io.BytesIO()
        torch.save({"weights": torch.zeros(3), "meta": obj}, buf)
        data = buf.getvalue()
        if kind == "torch_cut":
            data = bytearray(data[: int(len(data) * cut)])
            if data:
                data[flip % len(data)] ^= 0x55
            data = bytes(data)
    assume(kind != "bytes" or data[:1] != b"\x80" or len(data) < 2000)
    path = tmp_path / "fuzz.pth"
    path.write_bytes(data)
    try:
        build_sam(path, device="cpu")
    except SamMedError as exc:
        _must_name(exc, str(path), "fuzz.pth")
    else:
        pytest.fail(f"{kind}: {data[:40]!r} was accepted as a model checkpoint")


def test_zz_enough_inputs_ran() -> None:
    if not RAN:
        pytest.skip("run the whole module to count its inputs")
    assert sum(RAN.values()) >= 2000, dict(RAN)
