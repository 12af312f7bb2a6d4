"""The course around the notebooks: the set-up cell (``notebook``), the run's mode and sizes (``modes``), the
chapter timing table (``timing``), the exercise checkers (``exercises``) and the checked claims beside the prose
(``claims``)."""

from . import claims, exercises, modes, prose, timing
from .notebook import NotebookSettings, setup_notebook

__all__ = ["NotebookSettings", "setup_notebook", "exercises", "claims", "prose", "modes", "timing"]
