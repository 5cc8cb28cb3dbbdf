"""`python tests/slow_commits.py SECONDS ARGS...`: fastvar's command line whose every commit holds its
transaction open for SECONDS before committing, so that a test can kill it mid-commit. A test's
launcher: production code holds no hook for it."""
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvar import store  # noqa: E402
from fastvar.cli import main  # noqa: E402

delay, args = float(sys.argv[1]), sys.argv[2:]
writing = store.Store.writing


@contextmanager
def slow_writing(self):
    with writing(self):
        yield
        time.sleep(delay)  # inside the transaction: its journal is on disk


store.Store.writing = slow_writing
raise SystemExit(main(args, prog="python run.py"))
