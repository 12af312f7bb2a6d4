"""The course around the notebooks: the set-up cell (``notebook``), the run's mode and sizes (``modes``), the
chapter timing table (``timing``), the exercise checkers (``exercises``) and what the
chapters' sentences about numbers share (``prose``)."""

from . import exercises, modes, prose, timing
from .notebook import NotebookSettings, setup_notebook

__all__ = ["NotebookSettings", "setup_notebook", "exercises", "prose", "modes", "timing"]
