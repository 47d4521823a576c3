"""The lock of a run folder: one live process runs a run."""
import os


class RunLock:
    """An exclusive lock on a run folder, held while a run is alive: an flock on `run.lock`, which also
    holds the owner's PID. The kernel drops the lock when its process dies, however it dies, so a lock left
    by a killed run is stale by construction and the next run takes it over."""

    NAME = "run.lock"

    def __init__(self, folder, name=None):
        """name: the lock file's, where it is not a run folder's (eval.py locks its JSON's evaluation)."""
        import fcntl  # POSIX: the training scripts target Linux
        self.path = os.path.join(folder, name or self.NAME)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise RunLockHeld(holder) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self):
        self.file.close()  # closing drops the flock


class RunLockHeld(Exception):
    """Another live process holds the run folder's lock; args[0] is its PID as written in the lock file."""


def lock_holder(folder):
    """The PID (as text) of a live process holding `folder`'s run lock, or None. Only looks: the lock file
    is left as it is. A lock file that cannot be opened (a read-only folder) says nothing about a holder:
    None, and taking the lock reports the folder."""
    import fcntl
    path = os.path.join(folder, RunLock.NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds its exclusive lock
            except BlockingIOError:
                return f.read().strip() or "unknown"
    except OSError:
        return None
    return None
