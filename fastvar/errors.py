"""What fastvar raises for input it cannot use: one base class, each message one line a user can act on
(the command line prints it and exits with status 2)."""
from contextlib import contextmanager


class FastvarError(Exception):
    """Bad input or an unusable place; the message is one line a user can act on. A message that names
    parameters is a template with a `{}` for each Param: str() names them as the API spells them, and
    `on_command_line()` as the command line's flags do."""

    def __init__(self, message, *params):
        self.template, self.params = message, params
        super().__init__(self._naming(Param.in_api))

    def on_command_line(self):
        return self._naming(Param.as_flag)

    def _naming(self, spelling):
        """The template with its params spelt as `spelling` says (split, not str.format, so that braces
        in a value the message quotes stay as they are)."""
        pieces = self.template.split("{}", len(self.params))
        return "".join(piece + name for piece, name in zip(pieces, [*map(spelling, self.params), ""]))


class Param:
    """A parameter an error names, with the value it was given where that helps: `runs` or
    `device='cuda'` in the API, `--runs` or `--device cuda` on the command line."""

    def __init__(self, name, *value, flag=None):
        self.name, self.value, self.flag = name, value, flag  # flag, when given, is the whole command-line text

    def in_api(self):
        return self.name + "".join(f"={v!r}" for v in self.value)

    def as_flag(self):
        return self.flag or "--" + self.name.replace("_", "-") + "".join(f" {v}" for v in self.value)


class ConfigError(FastvarError, ValueError):
    """An impossible setting."""


class DataError(FastvarError):
    """Missing, corrupt or malformed data."""


class StoreError(FastvarError):
    """A results folder that cannot hold, give or take what is asked of it."""


class AnalysisError(FastvarError):
    """Folders that cannot give the asked-for analysis."""


def check_choices(settings, choices):
    """Each of `settings`' attributes named in `choices` ({name: allowed values}) among its allowed
    values, else a ConfigError naming it."""
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            raise ConfigError(f"unknown {{}} {getattr(settings, name)!r}; choose from {', '.join(allowed)}", Param(name))


def first_line(error):
    """An exception as one line: its type and the first line of its message (for what a user's code
    or a library raised, passed on inside fastvar's own one-line messages)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"


@contextmanager
def writing(path, remedy="choose another place", *params):
    """Writes to `path` whose failure (read-only file system, a file where a folder should be, a full
    disk) is a StoreError naming the place, not a traceback; `remedy` may name `params` as a message does."""
    try:
        yield
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}; {remedy}", *params) from None
