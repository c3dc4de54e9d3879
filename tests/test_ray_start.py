"""A Ray instance the app starts (``FREEZE_LAB_RAY_ADDRESS=local``) outlives the thread that asked for it.

Streamlit runs each page in a short-lived thread; Ray's processes started from a thread that then
ends stop answering (the driver loses its GCS and, after a minute, ends the whole server). This runs
in a process of its own: the test session's Ray instance (tests/test_ray.py) must not be the one joined.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import threading, time
from core.jobs.ray_cluster import cluster_info, connect
asker = threading.Thread(target=connect, args=("local",), kwargs={"num_cpus": 1})
asker.start()
asker.join()  # as a page's script thread ends
time.sleep(8)
info = cluster_info("local")
print("nodes", info.nodes, "cpus", info.cpus)
"""


def test_a_local_instance_outlives_the_thread_that_started_it():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "nodes 1 cpus 1.0" in done.stdout, done.stderr[-2000:]
