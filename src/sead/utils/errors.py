"""Errors that the CLI prints as one clear paragraph (no traceback)."""

import re

# How the losses' input checks name a NaN or inf (``sead.method.divergences.check_finite``, the zone functions).
_NONFINITE = re.compile(r"NaN or inf")


class SeadError(ValueError):
    """A problem with the user's input (config, data, models) that they can fix.

    The message names the field or file at fault and says what to do. The ``sead`` CLI prints it
    without a traceback and exits with status 2.
    """


class NonFiniteError(SeadError, FloatingPointError):
    """NaN or inf in logits or in the loss: the step is refused, never applied."""


def is_nonfinite(err: Exception) -> bool:
    """Whether ``err`` is about NaN or inf in a model's numbers (a :class:`NonFiniteError`, or a loss input check's
    ``ValueError`` naming them), rather than about a wrong input: the trainer drops such a step instead of
    stopping with the error."""
    return isinstance(err, NonFiniteError) or (isinstance(err, ValueError) and bool(_NONFINITE.search(str(err))))
