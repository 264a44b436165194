"""The napari plugin (the only napari/Qt-aware code of the package).

Contributions are declared in ``napari.yaml`` (the repository's top-level manifest; this
folder holds a link to it so that it ships inside the package). Nothing is imported here so
that napari's plugin discovery stays fast.
"""
