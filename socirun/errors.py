"""One exception hierarchy for everything a user can cause or meet.

Each error carries the one sentence shown to the user and the docker exit code; the CLI's single top-level
handler prints the sentence on stderr and exits with the code (tracebacks only with --debug).
"""

from __future__ import annotations

# docker's exit codes (docker/cli `toStatusError`): 125 the daemon / socirun itself failed,
# 126 the command cannot be invoked, 127 the command was not found; otherwise the container's own.
EXIT_DAEMON = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130


class SocirunError(Exception):
    """An error with a sentence meant for the user and the exit code socirun ends with."""

    exit_code: int = EXIT_DAEMON

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(SocirunError):
    """Bad command-line input: an unknown flag, a malformed value."""


class ConfigError(SocirunError):
    """A socirun, docker or containerd configuration file that cannot be used."""


class ContainerdError(SocirunError):
    """containerd is missing, unreachable, too old, or refused a call."""


class RegistryError(SocirunError):
    """The registry could not be reached or answered with an error."""


class ImageNotFoundError(RegistryError):
    """The reference names no image (manifest unknown / 404)."""


class AuthError(RegistryError):
    """The registry refused our credentials or the anonymous token."""


class DigestMismatchError(RegistryError):
    """Bytes received from the registry do not match the digest they were asked for."""


class MalformedImageError(RegistryError, ValueError):
    """A manifest, index, config or descriptor of the wrong shape or types (also a ValueError, which is what
    callers that parse image JSON already catch)."""


class PullError(SocirunError):
    """A pull that could not complete for a reason other than the registry or containerd."""


class SandboxError(SocirunError):
    """The private sandbox (containerd, registry) could not be started or used."""


class Interrupted(SocirunError):
    """The user pressed Ctrl-C; everything in flight was rolled back."""

    exit_code = EXIT_INTERRUPTED
