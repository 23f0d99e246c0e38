"""User-facing errors.

A :class:`UserError` is a problem with the user's input (a path, a config, an image, a model) that the
user can fix. The CLI prints its message as one line on stderr and exits with code 2; library callers
catch it like any other exception.
"""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix, in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded as it is: missing, not a model, pickled weights, a vqldm.json that
    does not fit the weights, parts that do not fit together. The message names the file and the fix.
    (Here, beside UserError, so that the CLI can catch it without importing the pipelines.)"""
