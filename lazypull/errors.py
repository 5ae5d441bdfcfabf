"""The project's error hierarchy.

Every error a user can meet derives from :class:`LazypullError`, so commands can print
one clear line (``str(err)``) instead of a traceback. Messages say what went wrong and,
where possible, what to do next. They never contain credentials.
"""

import errno


class LazypullError(Exception):
    """Base of every error lazypull raises on purpose."""


class DigestMismatchError(LazypullError):
    """Bytes did not hash to the digest that was promised for them."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch (expected {expected}, got {actual})")
        self.expected = expected
        self.actual = actual


class InvalidDigestError(LazypullError, ValueError):
    """A string is not a well-formed ``algorithm:hex`` digest."""


class FormatError(LazypullError):
    """A layer blob, footer or TOC is malformed, truncated or unsafe."""


class OCIError(LazypullError):
    """An OCI manifest, index, config or layout is malformed or unsupported."""


class ConfigError(LazypullError):
    """A config file or a flag naming one is wrong (the message says which): commands exit
    with status 2, as for any other usage error, so scripts tell it from a failed operation."""


LOG_LEVELS = ("debug", "info", "warning", "error")


def log_level(text: str) -> str:
    """*text* as a log level name, or :class:`ConfigError` listing the ones there are."""
    if text.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {text[:40]!r} (use one of: {', '.join(LOG_LEVELS)})")
    return text.lower()


class RegistryError(LazypullError):
    """A registry request failed after retries, or the registry answered wrongly."""


class _ImagePathError(LazypullError, OSError):
    """A path inside an image cannot be used as asked; also the matching ``OSError``."""

    errno_value = 0

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = self.errno_value


class ImageFileNotFoundError(_ImagePathError, FileNotFoundError):
    errno_value = errno.ENOENT


class ImageNotADirectoryError(_ImagePathError, NotADirectoryError):
    errno_value = errno.ENOTDIR


class ImageIsADirectoryError(_ImagePathError, IsADirectoryError):
    errno_value = errno.EISDIR


class ImageSymlinkLoopError(_ImagePathError):
    errno_value = errno.ELOOP


class ImageReadOnlyError(_ImagePathError, PermissionError):
    errno_value = errno.EROFS


class ImageNotAFileError(_ImagePathError):
    """Not what the operation needs: open of a device, readlink of a regular file."""

    errno_value = errno.EINVAL
