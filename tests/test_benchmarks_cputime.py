"""benchmarks/cputime.py: the CPU a child process burns shows between the stamps around it."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.cputime import TreeCpu


def test_child_cpu_is_counted_and_idle_time_is_not() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    with TreeCpu(interval=0.05) as cpu:
        time.sleep(0.2)
        idle0 = time.time()
        time.sleep(0.4)
        idle1 = time.time()
        t0 = time.time()
        subprocess.run([sys.executable, "-c", burn], check=True)
        t1 = time.time()
        time.sleep(0.2)
    busy = cpu.between(t0, t1)
    idle = cpu.between(idle0, idle1)
    assert busy is not None and 0.5 <= busy <= 1.5
    assert idle is not None and idle < 0.1
    assert cpu.between(t0 - 3600, t1) is None  # before sampling began: unknown, not zero
