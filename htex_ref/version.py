"""Version numbers: the package release and the wire-protocol version checked at registration."""

import sys

__version__ = "0.1.0"

#: Bumped whenever a message layout changes. A worker pool whose protocol version differs from the
#: interchange's is refused at registration with an error that names both versions.
PROTOCOL_VERSION = 5

PYTHON_VERSION = "{}.{}.{}".format(*sys.version_info[:3])


def python_minor(version: str) -> str:
    """'3.11.7' -> '3.11': pickled code is compatible within a minor release, not across."""
    return ".".join(version.split(".")[:2])
