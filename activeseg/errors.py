"""Named exceptions. The CLI turns them into clean messages and exit codes.

Every message says *what* went wrong and *where* (which file, volume, crop or task).
"""


class ActivesegError(Exception):
    """Base class of every error activeseg raises on purpose (exit code 1)."""

    exit_code = 1


class InputError(ActivesegError):
    """The user gave something unusable: a bad file, option or value (exit code 2)."""

    exit_code = 2


class ConfigError(InputError):
    """A config file is missing, unreadable or fails validation."""


class ProjectNotFoundError(InputError):
    """No activeseg project in the given directory or any parent."""


class ProjectExistsError(InputError):
    """`init` was pointed at a directory that already holds a project."""


class DatabaseRevisionError(ActivesegError):
    """The pool database is behind or ahead of the code's migrations."""


class DatabaseConnectionError(ActivesegError):
    """The ledger's database server cannot be reached or refuses the login."""


class VolumeFormatError(InputError):
    """An image or label file cannot be imported as a volume."""


class NotFoundError(InputError):
    """A named volume, crop, round or task does not exist in the pool."""


class StateError(ActivesegError):
    """The pool is not in a state that allows the operation (e.g. no labeled crops to train on)."""


class LockError(ActivesegError):
    """Another process holds the project's lock (exit code 75, EX_TEMPFAIL: try again)."""

    exit_code = 75


class LabelStudioError(ActivesegError):
    """Label Studio is unreachable, refuses a call or answers something unexpected."""


class AnnotationError(InputError):
    """An annotation cannot be turned into labels (unknown label, bad slice, bad RLE...)."""
