"""Content keys and atomic writes for everything adainfer stores on disk."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path


def content_key(*parts: object) -> str:
    """First 16 hex chars of the sha256 of ``json.dumps(parts, sort_keys=True, default=str)``; a numpy array
    part counts by its dtype, shape and bytes (``str`` of a large array elides its middle)."""
    import numpy as np

    parts = tuple(_array_key(p) if isinstance(p, np.ndarray) else p for p in parts)
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _array_key(array) -> str:
    import numpy as np

    h = hashlib.sha256(str((array.dtype.str, array.shape)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return "array:" + h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"  # same folder: os.replace is atomic
    try:
        with open(tmp, "xb") as f:  # a plain open keeps the umask's permissions (mkstemp forces 0600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))
