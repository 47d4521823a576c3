"""What reproduce.py runs for one of the reference's tables: ALP.py's arguments, one eval.py run per threat
model, and, where shortening flags cut the work, the label that marks it as a trial and not a reproduction."""
from reference import TEST_IMAGES


def evaluations(table):
    """[(norm, [eval.py attack names])]: one eval.py run per norm, each with the attacks of the reference's
    columns at that norm (eval.py runs each at every ε its suite has there, as the reference's tables)."""
    by_norm = {}
    for threat_model in table.threat_models:
        names = by_norm.setdefault(threat_model.norm, [])
        names += [column.attack for column in threat_model.columns if column.attack not in names]
    return list(by_norm.items())


def training_argv(table, epochs=None):
    """ALP.py's arguments for the table: the reference's command, with another epoch count for a trial."""
    return with_epochs(table.training, epochs)


def with_epochs(argv, epochs=None):
    """A training command with another epoch count (None: as it is)."""
    return [f"--epochs={epochs}" if epochs and arg.startswith("--epochs=") else arg for arg in argv]


def reference_epochs(table):
    return command_epochs(table.training)


def command_epochs(argv):
    return next(int(arg.split("=")[1]) for arg in argv if arg.startswith("--epochs="))


def evaluation_argv(norm, attacks):
    return ["--norms", norm, "--attacks", *attacks]


def shortening(table, epochs=None, subset=None, images=None, full=None):
    """{flag: value} of the flags that make this a shortened trial ({} for a reproduction). full: (epochs,
    test images) of the published table, by default the reference's."""
    full_epochs, full_images = full or (reference_epochs(table), TEST_IMAGES)
    cut = {}
    if epochs and epochs != full_epochs:
        cut["epochs"] = epochs
    if subset:
        cut["subset"] = subset
    if images and images < full_images:
        cut["images"] = images
    return cut


def trial_label(table, cut, images=None, full=None):
    """The line that heads every output of a shortened trial (None for a reproduction). full: as shortening's."""
    full_epochs, full_images = full or (reference_epochs(table), TEST_IMAGES)
    parts = []
    if "epochs" in cut:
        parts.append(f"{cut['epochs']} of the reference's {full_epochs} epochs")
    if "subset" in cut:
        parts.append(f"{cut['subset']} training images (--subset)")
    if images is not None and images < full_images:
        parts.append(f"{images} of the {full_images:,} test images")
    if not parts:
        return None
    return f"SHORTENED TRIAL, NOT A REPRODUCTION ({', '.join(parts)}): differences from the reference are expected"
