"""The one exception family of the core: every message names the value, the file and the fix."""


class ControlNetError(Exception):
    """Base class for errors a user can act on (bad file, wrong family, bad input)."""


class CheckpointError(ControlNetError):
    """A checkpoint could not be read, recognised or loaded strictly."""


class FamilyMismatchError(ControlNetError):
    """A ControlNet was paired with a model of another family (SD1.x / SD2.x / SDXL)."""


class PreprocessError(ControlNetError):
    """A preprocessor was given input it cannot handle (empty batch, NaN, too small, missing weights)."""
