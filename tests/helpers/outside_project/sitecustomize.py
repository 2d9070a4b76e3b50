"""Run first by a test's "user" process (its PYTHONPATH is this folder): hides this project's editable install, so the
process reads BLSP only as a user without this repository does, from a checkpoint's code (`trust_remote_code`)."""

import sys

sys.meta_path[:] = [
    finder for finder in sys.meta_path if not getattr(finder, "__module__", "").startswith("__editable")
]
