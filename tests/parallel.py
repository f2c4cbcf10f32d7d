"""`make test`: the whole suite as two pytest processes side by side.

The slow deployment tests (``-m deployment``: a SuperLink, SuperNodes and labs over
TLS) spend much of their time in Flower's fixed polls; they run in file order in one
process while the other runs everything else (Ray simulations and the fast tests). Run
one after the other the suite took 27 minutes here, over CI's 25. The deployment
process's report is printed when it ends; the exit code is non-zero if either failed.

Usage: ``python -m tests.parallel [extra pytest arguments for both]``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    base = [sys.executable, "-m", "pytest", "-q", "--durations=15", *argv]
    with tempfile.TemporaryDirectory(prefix="fedlab-tests-") as tmp:
        log_path = Path(tmp) / "deployment.log"
        t0 = time.monotonic()
        with open(log_path, "wb") as log:
            deploy = subprocess.Popen([*base, "-m", "deployment", "-p", "no:cacheprovider",
                                       "--basetemp", str(Path(tmp) / "deployment")],
                                      cwd=root, stdout=log, stderr=subprocess.STDOUT)
            try:
                print("tests: deployment tests in a second process (report at the end)",
                      flush=True)
                rest = subprocess.call([*base, "-m", "not deployment"], cwd=root)
                print(f"tests: the rest done after {time.monotonic() - t0:.0f} s; waiting "
                      "for the deployment tests", flush=True)
                deployed = deploy.wait()
            except BaseException:
                # SIGINT, as Ctrl-C would: pytest then runs the fixtures' teardown, which
                # stops the servers and labs it started (SIGTERM would skip it).
                deploy.send_signal(signal.SIGINT)
                try:
                    deploy.wait(90)
                except subprocess.TimeoutExpired:
                    deploy.kill()
                    deploy.wait()
                raise
        print(f"\n===== deployment tests ({time.monotonic() - t0:.0f} s) =====", flush=True)
        sys.stdout.write(log_path.read_text(errors="replace"))
        sys.stdout.flush()
    # pytest's 5 = "no tests collected" (e.g. a -k that matches nothing in one half)
    codes = [0 if c == 5 else c for c in (rest, deployed)]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
