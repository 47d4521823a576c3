"""Which packages each part needs (CPU): training runs without the AutoAttack package, which only the
evaluation's AutoAttack columns use."""
import os
import subprocess
import sys

from conftest import ROOT

# pyautoattack made unimportable (None in sys.modules), then the training script's --help, which imports
# everything a training run does, and the attack registry, which still names AutoAttack.
WITHOUT_AUTOATTACK = """
import runpy, sys
sys.modules["pyautoattack"] = None
sys.argv = ["ALP.py", "--help"]
try:
    runpy.run_path("ALP.py", run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
from attacks import ATTACKS
assert "aa-linf" in ATTACKS
print("no pyautoattack needed")
"""


def test_training_runs_without_the_autoattack_package():
    done = subprocess.run([sys.executable, "-c", WITHOUT_AUTOATTACK], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("no pyautoattack needed")
