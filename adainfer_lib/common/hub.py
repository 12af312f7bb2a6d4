"""Offline by default: the Hugging Face hub is contacted only when the user asks for it."""
from __future__ import annotations

import os
import sys


def offline_by_default() -> bool:
    """Set ``HF_HUB_OFFLINE=1`` unless it is set already or ``ADAINFER_ONLINE`` is; True when offline.

    ``huggingface_hub`` reads the variable once, when it is imported (``import adainfer_lib`` imports it through
    ``datasets``), so an already-imported hub is told too: without that, setting the variable here would change
    nothing, and an unknown model name would make the hub retry the network for half a minute."""
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if os.environ.get("ADAINFER_ONLINE") else "1")
    offline = os.environ["HF_HUB_OFFLINE"].strip().upper() in ("1", "ON", "YES", "TRUE")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = offline
    return offline
