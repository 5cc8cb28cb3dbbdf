"""What fastvar raises for input it cannot use: one base class, each message one line a user can act on
(the command line prints it and exits with status 2)."""
from contextlib import contextmanager


class FastvarError(Exception):
    """Bad input or an unusable place; the message is one line a user can act on."""


class ConfigError(FastvarError, ValueError):
    """An impossible setting."""


class DataError(FastvarError):
    """Missing, corrupt or malformed data."""


class StoreError(FastvarError):
    """A results folder that cannot hold, give or take what is asked of it."""


class AnalysisError(FastvarError):
    """Folders that cannot give the asked-for analysis."""


def first_line(error):
    """An exception as one line: its type and the first line of its message (for what a user's code
    or a library raised, passed on inside fastvar's own one-line messages)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"


@contextmanager
def writing(path, remedy="choose another place"):
    """Writes to `path` whose failure (read-only file system, a file where a folder should be, a full
    disk) is a StoreError naming the place, not a traceback."""
    try:
        yield
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}; {remedy}") from None
