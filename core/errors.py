"""The one error family of ConceptKit. Every message is written for the user: what is wrong and what to do."""


class ConceptKitError(Exception):
    """Base class of every error ConceptKit raises on purpose."""


class ModelLoadError(ConceptKitError):
    """A model or weight file could not be loaded."""


class UnsafeFileError(ModelLoadError):
    """A file in a format that can run code when loaded (pickle) was refused."""


class InputError(ConceptKitError):
    """An input value (prompt, image, size, option) is not usable."""


class Cancelled(ConceptKitError):
    """The user cancelled a long operation."""


class WorkflowError(ConceptKitError):
    """A workflow file is malformed or does not validate."""
