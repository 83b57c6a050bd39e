"""Per-user places for downloaded and generated files, never the current folder.

The cache root is $RADIUSGUARD_CACHE_DIR, else $XDG_CACHE_HOME/radiusguard, else
~/.cache/radiusguard: the local broker's jars and state live there.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["broker_data_dir", "cache_dir", "jar_cache_dir"]


def cache_dir() -> Path:
    """The per-user cache root (not created here)."""
    own = os.environ.get("RADIUSGUARD_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "radiusguard"


def jar_cache_dir() -> Path:
    """Where Maven puts the local broker's jars (shared by every broker of this user)."""
    return cache_dir() / "kafka" / "libs"


def broker_data_dir(name: str = "broker") -> Path:
    """State (config, logs, pid file) of the local broker called `name`."""
    return cache_dir() / "kafka" / name
