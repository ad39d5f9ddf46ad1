"""The simulator and planner must import and run without torch (DESIGN.md)."""
import subprocess
import sys

CODE = """
import sys
sys.modules['torch'] = None  # any 'import torch' now raises ImportError
sys.modules['triton'] = None
import specmoe.specs, specmoe.traces, specmoe.traces.stats, specmoe.traces.synth
import specmoe.simulator, specmoe.planner
import pkgutil, importlib
for pkg in (specmoe.simulator, specmoe.planner, specmoe.traces, specmoe.specs):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):
        importlib.import_module(m.name)
from specmoe.cli import main
assert main(['trace', 'stats', '--json']) == 0
"""


def test_simulator_and_planner_import_without_torch():
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
