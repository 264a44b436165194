"""``sam-med``: batch segmentation from the command line (thin over :mod:`napari_sam_med.volume`).

Commands, one module each::

    sam-med segment IMAGE --box3d X0 Y0 Z0 X1 Y1 Z1 -o OUT.nii.gz [--qc DIR]   (segment)
    sam-med segment IMAGE --text "tumour" [--text-slices Z0 Z1] --model TEXT.pt -o OUT.nii.gz
    sam-med segment --manifest cases.json --out-dir D [--resume] [--qc DIR]
    sam-med precompute IMAGE [IMAGE ...]                                        (precompute)
    sam-med info                                                                (info)
    sam-med export-onnx --model lite_medsam -o DIR                              (export_onnx)
    sam-med pacs find|get|segment|store ...                                     (pacs)

and the data engine (:mod:`napari_sam_med.cli.data_engine`)::

    sam-med auto IMAGE -o OUT.nii.gz
    sam-med evaluate DATASET --models A B
    sam-med export --out-dir DS --pair IMAGE LABEL ...
    sam-med replay SESSION.json --checkpoint my_finetune.pt --out DIR

:mod:`.main` builds the parser from them; :mod:`.options` holds the option groups and helpers
the commands share, :mod:`.progress` the progress bars.

Scale-out: ``torchrun --nproc_per_node N -m napari_sam_med.cli segment --manifest ...``
gives every rank every N-th case and one device; rank 0 prints the merged summary.
See ``docs/cli.md``.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
