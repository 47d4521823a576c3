"""Run under torchrun: trains with ALP.py's own main() and saves this process's final weights, so that a
test can compare the ranks. Usage: torchrun --nproc_per_node=K tests/ddp_worker.py WEIGHTS_DIR ALP-ARGS..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import ALP  # noqa: E402

weights_dir, argv = sys.argv[1], sys.argv[2:]
model = ALP.main(argv)
torch.save(model.state_dict(), os.path.join(weights_dir, f"rank{os.environ['RANK']}.pt"))
