"""ALP.py's main() in a process of its own, as the tests start it: with conftest.CHEAP_VALIDATION (the
tests that use it assert on files, lines and learning, not on robust accuracy) and, if WEIGHTS_DIR is given,
this process's final weights saved there, so that a test can compare the ranks of a torchrun.
Usage: python tests/alp_process.py [--weights WEIGHTS_DIR] ALP-ARGS...   (or under torchrun)"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import ALP  # noqa: E402
import training.loop  # noqa: E402
from conftest import cheap_validation_attack  # noqa: E402

training.loop.validation_attack = cheap_validation_attack
weights_dir, argv = (sys.argv[2], sys.argv[3:]) if sys.argv[1:2] == ["--weights"] else (None, sys.argv[1:])
sys.argv[0] = "ALP.py"  # its one-line errors name the script
model = ALP.main(argv)
if weights_dir is not None:
    torch.save(model.state_dict(), os.path.join(weights_dir, f"rank{os.environ.get('RANK', 0)}.pt"))
