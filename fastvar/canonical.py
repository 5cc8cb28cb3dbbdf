"""What a config records of a typed object: each setting that changes a run, less those equal to
their declared defaults, whatever their truth value. A setting added later with a default that
keeps the old behaviour therefore leaves the configs, and hashes, of older folders as they were
(tests/test_old_folders.py opens folders of every schema). The one place that rule lives."""
from dataclasses import MISSING, fields


def declared_defaults(cls):
    """{field: default} of a dataclass, for the fields that declare a plain default."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def without_defaults(values, defaults):
    """`values` less each entry equal to its entry in `defaults` (a value 0 or False is kept unless
    0 or False is the default)."""
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}
