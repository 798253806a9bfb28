"""medseg: self-configuring 3D medical image segmentation (the nnU-Net method).

Layers (lower never imports higher): ``core`` -> ``geometry`` -> ``io`` /
``dataset`` -> stages -> ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medseg")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
