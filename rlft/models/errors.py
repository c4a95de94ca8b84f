"""Model errors, in a module of their own so that the loader and the SmolLM2 converter both import them
without importing each other."""


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""
