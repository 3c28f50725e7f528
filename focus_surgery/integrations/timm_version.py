"""The timm versions the integration is tested with: ``pyproject.toml`` declares ``timm>=MIN_TIMM`` (a test keeps
the two equal); below it the integration refuses to register with one line naming the fix."""

from __future__ import annotations

import re

MIN_TIMM = "1.0.31"  # the version CI runs every timm test with
SUPPORTED_TIMM = f">={MIN_TIMM},<2"


def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as ``1.0.31`` or ``1.0.32.dev0`` (timm's and Ultralytics')."""
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def check_timm(version: str | None = None) -> str:
    """Raise RuntimeError naming the supported range if ``version`` (default: the installed timm's) is outside it."""
    if not version:
        import timm

        version = timm.__version__
    if not version_tuple(MIN_TIMM) <= version_tuple(version) < (2,):
        raise RuntimeError(
            f"focus-surgery's timm integration needs timm{SUPPORTED_TIMM}, found timm {version}: "
            f"pip install 'timm{SUPPORTED_TIMM}'"
        )
    return version
