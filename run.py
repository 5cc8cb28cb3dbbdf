"""fastvar's command line: `python run.py --experiment fixed-init --batch-models 16`."""
from fastvar.cli import main

raise SystemExit(main(prog="python run.py"))
