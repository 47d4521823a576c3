"""Everything ALP.py, CLP.py and LSQ.py train with, one concern per module:

    loop         the training loop the three scripts share, around each script's own iteration
    alp          the ALP loss and training step (ALP.py and bench.py run this one)
    noise        the Gaussian input noise of CLP and LSQ
    hyp          the tables: the flags' defaults by method and data set, and what no flag sets
    flags        the scripts' command line, the data set's defaults, the way back to the former defaults
    loading      the run's data as device tensors
    speed        which speed options hold on a device; the bf16 autocast
    epoch        a training epoch's figures; the stop on a non-finite loss
    validation   eval.py's attack after an epoch, its timing, the verdict on a run that barely learnt
    clock        seconds per batch, and the estimate of the run's time
    processes    the plumbing of a run over several processes (torchrun)
    run_folder   a run's folder, from its start to its end (with resume, lock and records below it)
    resume       what --resume allows
    lock         one live process per run folder
    records      args.json, log lines, metrics.csv, curves.png, random-number state

The names below are those that modules outside training import from the package itself.
"""
from .alp import alp_loss, train_step
from .epoch import EpochTally
from .processes import setup_process
from .speed import cpu_computes_bf16_natively, mixed_precision

__all__ = ["EpochTally", "alp_loss", "cpu_computes_bf16_natively", "mixed_precision", "setup_process",
           "train_step"]
