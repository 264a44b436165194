"""The 3D interactive benchmark (CVPR 2025 interactive 3D protocol) behind
``sam-med evaluate --mode 3d``; see ``docs/benchmark_3d.md``.

Modules: :mod:`.cases` (case lists and patient splits), :mod:`.clicks` (simulated prompts),
:mod:`.runner` (the protocol through the 3D engine), :mod:`.store` (run folder, resume),
:mod:`.report` (tables, CSV, JSON, PNG), :mod:`.cli`; Dice, NSD and AUC come from the shared
:mod:`napari_sam_med.metrics`.
Importing this package is light: torch and scipy load only when a benchmark runs.
"""

STARTS = ("box3d", "box2d", "point")
GROUPS = ("train", "val")
