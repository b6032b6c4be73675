"""Developer tools that are not part of the installed ``ayg`` package: run them from the
repository root (``python -m tools.toyworld.train ...``) with ``ayg`` installed or
``PYTHONPATH=src``."""
