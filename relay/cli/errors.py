"""How ``quickslot-relay`` fails: exit codes and :class:`CliError`."""

from __future__ import annotations

from relay.errors import RelayError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(RelayError):
    """A failure to report to the operator (exit code 1)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code
