"""TTP Gateway core: FHIR plumbing (routing, formats, auth, errors, plugins), no pseudonym logic.

Plugin authors need little more than this:

    from ttp_gateway.core import Operation, Param, hookimpl, fhir, errors
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ttp-gateway")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"

from . import errors, fhir  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .operations import Operation, Param, Result, Search  # noqa: E402

__all__ = ["Operation", "Param", "Result", "Search", "errors", "fhir", "hookimpl", "__version__"]
