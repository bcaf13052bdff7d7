"""The errors modeledit raises. Each message names what was wrong and how to fix it."""


class ModelEditError(Exception):
    """Base class: every error modeledit raises on purpose."""


class RequestError(ModelEditError, ValueError):
    """An edit request is malformed (the message names the field and the fix)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ModelNotFoundError(ModelEditError, LookupError):
    """A model name is neither packaged, a local directory, nor loadable from the hub."""


class UnsupportedModelError(ModelEditError, TypeError):
    """The module tree does not show the parts a method needs (layers, MLP projection, ...)."""


class EditFailedError(ModelEditError, RuntimeError):
    """An edit could not be computed (NaN loss, singular statistics, ...). The weights are unchanged."""


class PatchError(ModelEditError, ValueError):
    """A patch file is corrupt, or does not fit the model it is applied to."""


class DataError(ModelEditError, ValueError):
    """A benchmark or corpus file is missing or malformed."""


class ScaleError(ModelEditError, RuntimeError):
    """Work spread over workers could not run: Ray is not installed, a worker died, a cluster is unreachable."""
