class SLIDE:
    """Placeholder: being written."""

    def __init__(self, epsilon, **options):
        self.epsilon, self.options = epsilon, options
        self.norm = options.get("norm")

    def __call__(self, model, x, y):
        raise NotImplementedError("SLIDE")
