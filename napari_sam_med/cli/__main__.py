"""``python -m napari_sam_med.cli`` (also under ``torchrun``) runs ``sam-med``."""

import sys

from .main import main

sys.exit(main())
