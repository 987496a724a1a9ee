"""Exception classes shared by the library and the command line."""


class ApplePerturbError(Exception):
    """Base class of every error the library raises on purpose.

    The command line prints the message of these errors without a traceback,
    so each message must name the value or file at fault and the fix.
    """


class InvalidInputError(ApplePerturbError, ValueError):
    """An image, mask, box, manifest value or option is invalid."""


class CheckpointError(ApplePerturbError, ValueError):
    """A weights or perturber file is missing, unreadable or of the wrong kind."""


class PerturberMismatchError(CheckpointError):
    """A perturber was trained against another backbone or latent shape."""


class TrainingInterrupted(ApplePerturbError):
    """Training stopped on a signal before it finished; nothing was written."""
