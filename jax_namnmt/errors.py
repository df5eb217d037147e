"""User-facing errors: a clear message, exit status 2, no traceback unless --debug."""


class UserError(Exception):
    """A problem with the user's input (corpus, argument, config, checkpoint).

    The message must name the file, line or field at fault and say what to do.
    Command-line doors catch it, print ``error: <message>`` and exit with status 2.
    """


class DataError(UserError):
    """A corpus file is missing, unreadable or malformed."""


class ConfigError(UserError):
    """A config field is unknown, has the wrong type or an invalid value."""


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the model."""


class TrainingDiverged(UserError):
    """Too many consecutive updates had a non-finite loss or gradient; the last good checkpoint is kept."""
