"""Segment 3D in the napari plugin against the same propagation without GUI (as the CLI runs
it), in one run, on one lesion of the CT phantom (a benchmark, not a test).

Both start from the same box on slice 22 of lesion 1 with the key slice already embedded
and a cold cache for every other slice, with the same model and torch threads:

* ``cli``: ``volume.segment.segment_volume`` (the code of ``sam-med segment``) with the box
  as a key-slice prompt;
* ``plugin``: the SAM-Med widget in a napari window: the box is drawn on the Shapes layer,
  its 2D preview awaited, then Segment 3D (G) is timed until the job's result is shown.
  ``--scroll`` also moves the viewer to every slice the job reports, as a user watching it
  does (each new slice in view used to start its own embedding beside the job's).

Prints the times and ``plugin / cli``. The machine may be loaded: compare the ratio, which
both runs share. Run under a display, e.g.::

    OMP_NUM_THREADS=1 nice -n 15 xvfb-run -a -s "-screen 0 1600x1000x24" \\
        .venv/bin/python benchmarks/bench_segment3d.py --scroll
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
Z, BOX = 22, [24.0, 45.0, 47.0, 64.0]  # lesion 1 of the CT phantom


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_cli(model_name: str) -> tuple[float, int]:
    """Seconds of the key-slice propagation without GUI, and the object's voxels."""
    from napari_sam_med import build_sam
    from napari_sam_med.volume.cache import EmbeddingCache
    from napari_sam_med.volume.io import read_volume
    from napari_sam_med.volume.segment import segment_volume
    from napari_sam_med.volume.slices import SliceSegmenter
    from napari_sam_med.volume.voxel_prompts import VoxelPrompt

    volume = read_volume(REPO / "sample_data" / "ct_phantom.nii.gz")
    model = build_sam(model_name, device="cpu")
    cache = EmbeddingCache(tempfile.mkdtemp(prefix="bench3d_cli_"))
    seg = SliceSegmenter(model, volume.array, "ct_soft_tissue", cache=cache, spacing=volume.spacing)
    seg.embedding(Z)  # the key slice is embedded in the plugin too (its 2D preview)
    say("cli: propagating")
    prompt = VoxelPrompt(1, "lesion", key_prompts={Z: {"box": BOX}})
    t0 = time.perf_counter()
    labels, _ = segment_volume(model, volume, [prompt], "ct_soft_tissue", cache=cache)
    return time.perf_counter() - t0, int((labels > 0).sum())


def run_plugin(model_name: str, scroll: bool) -> tuple[float, int, dict]:
    """Seconds from Segment 3D to its result in the widget, the voxels, and counters."""
    os.environ["NAPARI_SAM_MED_CACHE"] = tempfile.mkdtemp(prefix="bench3d_plugin_")
    os.environ.setdefault("NAPARI_SAM_MED_SAMPLE_DATA", str(REPO / "sample_data"))
    import napari
    from bench_plugin import run_until

    from napari_sam_med.plugin._widget import SamMedWidget

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-sam-med", "ct_phantom")
    widget = SamMedWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM-Med", area="right")
    widget.model.view.model_combo.setCurrentText(model_name)
    widget.model.view.device_combo.setCurrentText("cpu")
    widget.go_to(Z)
    widget.model.view.load_btn.click()
    run_until(lambda: widget.session is not None, max_s=600)
    run_until(lambda: not widget.busy())
    say(f"plugin: model loaded ({widget.activity.view.status.text()})")
    corners = [[Z, y, x] for y, x in ((BOX[1], BOX[0]), (BOX[1], BOX[2]),
                                      (BOX[3], BOX[2]), (BOX[3], BOX[0]))]  # fmt: skip
    widget.shapes_layer.add_rectangles(np.array(corners, float))
    run_until(lambda: not widget.busy())
    counts = {"refreshes": 0, "embeddings_started": 0}
    refresh = widget.preview_layer.refresh

    def counted_refresh(*a, **k):
        counts["refreshes"] += 1
        return refresh(*a, **k)

    widget.preview_layer.refresh = counted_refresh
    encoder = widget.engine.segmenter.model.image_encoder
    calls = [0]
    forward = encoder.forward

    def counted_forward(*a, **k):
        calls[0] += 1
        return forward(*a, **k)

    encoder.forward = counted_forward
    if scroll:  # follow the job's progress slice by slice, as a user watching it does
        from qtpy.QtCore import QTimer

        follow = QTimer()
        follow.timeout.connect(lambda: _follow(widget))
        follow.start(50)
    say("plugin: Segment 3D")
    t0 = time.perf_counter()
    widget.volume.segment3d()
    run_until(lambda: not widget.busy(), poll_ms=5)
    seconds = time.perf_counter() - t0
    counts["encoder_calls"] = calls[0]
    voxels = int(widget.session.object_mask(1).sum())
    widget.shutdown()
    run_until(lambda: not widget.busy())
    viewer.close()
    return seconds, voxels, counts


def _follow(widget) -> None:
    text = widget.activity.view.status.text()
    if "slice " in text and text.startswith("Segment 3D:"):
        z = int(text.rsplit("slice ", 1)[1].rstrip(")"))
        widget.go_to(z)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scroll", action="store_true", help="follow the job slice by slice")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    plugin_s, plugin_voxels, counts = run_plugin(args.model, args.scroll)
    cli_s, cli_voxels = run_cli(args.model)
    result = {
        "model": args.model,
        "torch_threads": args.threads,
        "load_average_1min": round(os.getloadavg()[0], 1),
        "scroll": args.scroll,
        "cli_s": round(cli_s, 2),
        "plugin_s": round(plugin_s, 2),
        "plugin_over_cli": round(plugin_s / cli_s, 2),
        "same_voxels": plugin_voxels == cli_voxels,
        "voxels": [plugin_voxels, cli_voxels],
        **counts,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
