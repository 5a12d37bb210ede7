"""One error hierarchy for opsflow; each kind carries the exit code of seed 003.

Tasks and library code raise these; only the command line turns them into an exit
code and a one-line message.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_DEPENDENCY = 2
EXIT_CONFIG = 3
EXIT_CONNECTION = 4
EXIT_PERMISSION = 5
EXIT_DRY_RUN = 10


class OpsflowError(Exception):
    """Base of every error opsflow reports to a user."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, where: str | None = None) -> None:
        message = " ".join(str(message).split())  # one line, whatever the cause said
        super().__init__(message, where)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ValidationError(OpsflowError):
    """Bad configuration or input: a workflow file, a parameter, an option."""

    exit_code = EXIT_CONFIG


class DependencyError(OpsflowError):
    """A prerequisite or an upstream step did not hold."""

    exit_code = EXIT_DEPENDENCY


class ConnectionFailure(OpsflowError):
    """A service (Prefect API, database, receiver) could not be reached."""

    exit_code = EXIT_CONNECTION


class PermissionFailure(OpsflowError):
    """The operating system refused access to a file or resource."""

    exit_code = EXIT_PERMISSION


class StepFailure(OpsflowError):
    """One or more workflow steps failed; the run summary says which."""

    exit_code = EXIT_FAILURE
