"""`python -m fastvar ...`, the same command line as `fastvar` and `python run.py`."""
from fastvar.cli import main

raise SystemExit(main(prog="python -m fastvar"))
