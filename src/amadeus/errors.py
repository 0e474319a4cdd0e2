"""Errors a run's set-up raises that the commands print as one line (exit code 2), not as a traceback:
a setting that cannot work (weight averaging with a sharded strategy), a resume whose data settings
changed, too little data for the ranks, workers and batch."""
from __future__ import annotations


class RunSetupError(ValueError):
    """A training run that cannot start as configured; the message says which setting and what to do."""
