"""Errors that the CLI prints as one clear paragraph (no traceback)."""


class SeadError(ValueError):
    """A problem with the user's input (config, data, models) that they can fix.

    The message names the field or file at fault and says what to do. The ``sead`` CLI prints it
    without a traceback and exits with status 2.
    """


class NonFiniteError(SeadError, FloatingPointError):
    """NaN or inf in logits or in the loss: the step is refused, never applied."""
