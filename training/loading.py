"""The data of a training run, loaded once as tensors on the device, with one-line refusals of splits too
small to train on."""
from data import DATASETS, DataError, DeviceLoader, data_digest, train_val_splits
from utils import fail

from .processes import barrier
from .validation import validation_batch_size


def load_data(dataset, data_root, ratio, subset, seed, batch_size, device, rank, world_size, channels_last):
    """(training loader, validation loader, digest of their data): each split one uint8 tensor on the device.
    Rank 0 downloads the data if needed; the others wait for it."""
    spec = DATASETS[dataset]
    if rank != 0:
        barrier()
    try:
        (train_x, train_y), (val_x, val_y) = train_val_splits(dataset, data_root, ratio, subset, seed)
    except DataError as e:
        fail(str(e))
    if rank == 0:
        barrier()
    if subset and subset > len(train_y):
        fail(f"--subset {subset} is more than the {len(train_y)} training images there are")
    if subset and len(train_y) < world_size * batch_size:
        per = f" per process, {world_size} processes" if world_size > 1 else ""
        fail(f"--subset {subset} is fewer training images than one batch of {batch_size} (-b){per}: "
             f"raise --subset or lower -b")
    if len(train_y) < world_size * batch_size or len(val_y) == 0:
        fail(f"--ratio {ratio:g} leaves {len(train_y)} training and {len(val_y)} validation images: too few "
             f"for a batch of {batch_size} per process and a validation")
    digest = data_digest(train_x, train_y, val_x, val_y)
    train_loader = DeviceLoader(train_x, train_y, batch_size, device, shuffle=True, crop=spec.crop,
                                flip=spec.flip, seed=seed, rank=rank, world_size=world_size,
                                channels_last=channels_last)
    val_loader = DeviceLoader(val_x, val_y, validation_batch_size(device), device, channels_last=channels_last)
    return train_loader, val_loader, digest
