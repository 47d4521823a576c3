"""A training epoch's figures, and the stop of a run whose loss or weights are no longer finite."""
import torch
import torch.distributed as dist

from utils import fail

from .processes import reduce_over_processes


class EpochTally:
    """The running figures of a training epoch, kept on the device so that nothing waits for the GPU: the
    loss sum, the adversarial examples classified right, the image count, and the first batch whose loss
    was not finite (-1 if none). Read once, after the epoch, summed over the processes."""

    def __init__(self, device):
        self.totals = torch.zeros(3, device=device)
        self.first_bad_batch = torch.tensor(-1, device=device)
        self.batches = 0

    def add(self, loss, logits_adv, y):
        self.totals[0] += loss * len(y)
        self.totals[1] += (logits_adv.argmax(1) == y).sum()
        self.totals[2] += len(y)
        bad = (self.first_bad_batch < 0) & ~torch.isfinite(loss)
        self.first_bad_batch = torch.where(bad, self.batches, self.first_bad_batch)
        self.batches += 1

    def result(self):
        """(mean loss, adversarial accuracy, first non-finite batch or -1) over every process."""
        loss_sum, correct, count = reduce_over_processes(self.totals).tolist()
        first_bad_batch = int(reduce_over_processes(self.first_bad_batch, dist.ReduceOp.MAX))
        return loss_sum / count, correct / count, first_bad_batch


def stop_unless_finite(first_bad_batch, model, epoch, kept):
    """Ends the run (exit status 1) after an epoch whose loss, checked before each step, or whose weights,
    checked after the last, are not finite; `kept` says what the run leaves to continue from."""
    if first_bad_batch >= 0:
        fail(f"the loss became NaN or infinite at epoch {epoch + 1}, batch {first_bad_batch + 1}; stopping "
             f"({kept})", status=1)
    if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
        fail(f"the weights became NaN or infinite in epoch {epoch + 1}'s last step; stopping ({kept})", status=1)
