"""torchrun with DistributedDataParallel on CPU (gloo): two processes train one model."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from checkpoints import load_checkpoint


@pytest.mark.slow
def test_two_processes_keep_identical_weights_write_one_run_and_learn_also_when_the_run_grows(
        synthetic_mnist_root, tmp_path):
    out, weights = tmp_path / "runs", tmp_path / "weights"
    weights.mkdir()

    def torchrun(*extra):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(ROOT / "tests" / "alp_process.py"), "--weights", str(weights),
             "mnist", "mnist", "-lp=null", "-lr=0.001", "-wd=0", "--optimizer=adam", "-b=25", "--epsilon=0.3",
             "--steps=2", "--stepsize=0.1", "--eval-freq=3", "--subset=300", "--device=cpu",
             "--data-root", str(synthetic_mnist_root), "--out", str(out), *extra],
            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    torchrun("--epochs=2")
    result = torchrun("--epochs=3", "--resume")  # rank 0 renames the folder, which the other rank has read
    assert "the run grows from 2 to 3 epochs" in result.stdout

    rank0, rank1 = (torch.load(weights / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    (run,) = os.listdir(out)  # rank 0 alone writes
    assert sorted(os.listdir(out / run)) == ["args.json", "best_clean.pt", "best_robust.pt", "curves.png",
                                             "last.pt", "log.txt", "metrics.csv", "run.lock"]
    with open(out / run / "args.json") as f:
        assert json.load(f)["runs"][0]["in_force"]["world_size"] == 2
    assert result.stdout.count("epoch   3/3") == 1

    state = load_checkpoint(str(out / run / "last.pt"))
    assert all(torch.equal(state["model"][k], rank0[k]) for k in rank0)
    assert len(state["rng"]) == 2  # each process's random stream, for resuming
    losses = [row["train_loss"] for row in state["metrics"]]
    assert losses[-1] < losses[0]
