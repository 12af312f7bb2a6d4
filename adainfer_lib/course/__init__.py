"""The course around the notebooks: the set-up cell (``notebook``) and the exercise checkers (``exercises``)."""

from . import exercises
from .notebook import NotebookSettings, setup_notebook

__all__ = ["NotebookSettings", "setup_notebook", "exercises"]
