"""Where adainfer keeps its data: ``$ADAINFER_DATA`` or ``<repo root>/data``."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The data folder (``ADAINFER_DATA`` if set, else ``<repo root>/data``), created if missing."""
    env = os.environ.get("ADAINFER_DATA")
    path = Path(env).expanduser() if env else REPO_ROOT / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path
