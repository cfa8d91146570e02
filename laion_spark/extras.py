"""Optional dependencies: fail at a command's start, with the install command, not deep inside.

    require("report", "matplotlib")   # before the report stage draws anything

Extras are declared in setup.cfg ([options.extras_require]); `make setup` installs them all.
"""

from __future__ import annotations

import importlib.util


class MissingExtra(ImportError):
    """A command needs an optional dependency that is not installed."""


def require(extra: str, *modules: str) -> None:
    """Raise MissingExtra naming the install command when any of `modules` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(
            f"this needs {', '.join(missing)} (optional extra {extra!r}); "
            f"install with: pip install 'laion_spark[{extra}]'"
        )
