"""Errors the kit raises on bad input, and the warnings it gives: each message says what to do next."""


class GemmaWidgetsError(Exception):
    """Base class: a problem the user can fix, reported without a deep traceback."""


class UnknownModelError(GemmaWidgetsError, ValueError):
    """The model name is neither a preset, a local folder, nor a hub id that exists."""


class GatedModelError(GemmaWidgetsError, PermissionError):
    """A gated hub model was asked for without a token that has access."""


class OfflineModelError(GemmaWidgetsError, ConnectionError):
    """A hub model is not in the local cache and the hub cannot be reached."""


class UnknownPrecisionError(GemmaWidgetsError, ValueError):
    """The precision name (or one of its options) is not one the kit knows: a typo, not a machine limit."""


class PrecisionUnavailableError(GemmaWidgetsError, RuntimeError):
    """The precision cannot run here (no CUDA, package missing, too little memory...)."""


class GenerationError(GemmaWidgetsError, RuntimeError):
    """A generation failed (prompt too long for the context, the model raised...)."""


class MemoryWarning(UserWarning):
    """A load may not fit in what a container's memory limit leaves beside what the kernel already holds."""
