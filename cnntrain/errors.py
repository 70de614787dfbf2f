"""The two kinds of error a user can cause, and the exit codes they map to.

Only `cli.main` turns these into exit codes; library code raises them with a
message that names the file, the key path and what was expected.
"""


class CnnTrainError(Exception):
    """Base class: an error with a one-line message meant for the user."""

    exit_code = 1


class ConfigError(CnnTrainError):
    """A usage or configuration mistake: bad YAML, unknown key, wrong type (exit 2)."""

    exit_code = 2


class RunError(CnnTrainError):
    """A failure while running: missing data, I/O, divergence (exit 1)."""

    exit_code = 1


class RunInterrupted(CnnTrainError):
    """Training stopped by a signal after saving a checkpoint; exit 128 + signal (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
