"""The one error family of ConceptKit. Every message is written for the user: what is wrong and what to do.

Every class of the family reports the module `conceptkit`: ComfyUI names an error by its module and class
("conceptkit.InputError", not the path ComfyUI loaded the pack from), and pickle finds it there (the package
exports them)."""

PUBLIC_MODULE = "conceptkit"


class ConceptKitError(Exception):
    """Base class of every error ConceptKit raises on purpose."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = PUBLIC_MODULE


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


class Diverged(InputError):
    """The training loss stopped being a finite number."""


ConceptKitError.__module__ = PUBLIC_MODULE
