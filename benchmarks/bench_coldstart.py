"""Cold start of ``daskcal demo``: a run with an empty numba cache, then one with the cache it wrote.

Run from outside the checkout (``python benchmarks/bench_coldstart.py [--rounds N] [--src DIR ...]``): each
round runs, for every source tree given (default: the one this file belongs to), the demo once with an
empty ``NUMBA_CACHE_DIR`` and once more with the same cache, and prints wall, user and system seconds,
the load average before the run and whether the console announced compiling. Results:
``benchmarks/results/coldstart.txt``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINE = "compiling numba kernels"


def _demo(src: Path, cache: Path, out: Path) -> tuple[float, float, float, bool]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "daskcal.cli._main", "demo", "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, LINE in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--src", nargs="+", default=[str(Path(__file__).resolve().parents[1])])
    args = parser.parse_args()
    print("round  src  run   wall s  user s  sys s  load  announced")
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        for r in range(1, args.rounds + 1):
            for src in args.src:
                cache, out = Path(tmp) / "nbc", Path(tmp) / "out"
                shutil.rmtree(cache, ignore_errors=True)
                for run in ("cold", "warm"):
                    load = os.getloadavg()[0]
                    wall, user, system, said = _demo(Path(src), cache, out)
                    print(f"{r:<6d} {src}  {run}  {wall:7.2f} {user:7.2f} {system:6.2f} {load:5.2f}  {said}", flush=True)


if __name__ == "__main__":
    main()
