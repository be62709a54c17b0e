"""multirefine: refine K cryo-EM maps at once from one heterogeneous particle stack."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("multirefine")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
