"""The one exception for bad user input to ``tools/evaluate.py``: its message names the file/option and the fix.

The command line prints it as one ``error: ...`` line and exits 2; every other exception is a bug and keeps its
traceback.
"""


class EvalInputError(ValueError):
    """A benchmark file, generations file, run directory or option that cannot be used as given."""
