"""Process-wide settings of fastvar's own commands, applied before torch loads.

OpenMP's idle threads spin before they sleep. Beside another busy process on a small machine that
spinning takes the cores the work needs (two spinning torch processes slow each other many times
over). `GOMP_SPINCOUNT` bounds the spinning; benchmarks/openmp_wait.py measures the choices, and
docs/performance.md has the table. A setting the user made wins. Results do not depend on it.
"""
import os

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
OPENMP_WAIT = {"GOMP_SPINCOUNT": "1000"}


def set_openmp_wait(environ=os.environ):
    """Bound how long OpenMP threads spin, unless the user set how they wait; True if it did."""
    if any(name in environ for name in WAIT_VARIABLES):
        return False
    environ.update(OPENMP_WAIT)
    return True
