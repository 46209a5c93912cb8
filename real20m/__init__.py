"""real20m: query-driven cross-domain retrieval (QCD) of micro-videos and goods."""
from importlib import metadata

try:
    __version__ = metadata.version("real20m")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
