"""3D layer: volume IO keeping geometry, embedding cache, 3D propagation, prompt manifests.

Import from the sub-modules, e.g. ``from napari_sam_med.volume.io import read_volume``.
"""
