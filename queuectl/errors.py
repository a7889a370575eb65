"""The errors queuectl shows to users: one line each, with the exit code to use."""


class QueueError(Exception):
    """An operational failure: the request was well formed but could not be done (exit 1)."""

    exit_code = 1


class UsageError(QueueError):
    """The command line, a job or a setting is malformed (exit 2)."""

    exit_code = 2


class JobValidationError(UsageError):
    """A job was refused by an ingestion hook; nothing was stored."""


class NotFound(QueueError):
    """An id that the store does not hold."""


class Conflict(QueueError):
    """The request clashes with what the store holds (a duplicate id, a job in the wrong state)."""


class StoreBusy(QueueError):
    """The store stayed locked by another process for longer than the lock timeout."""


class SchemaError(QueueError):
    """The store was written by a newer queuectl than this one."""


class PluginError(QueueError):
    """A plugin could not be loaded or registered something twice."""


class StoreReplaced(QueueError):
    """The store file was deleted or replaced while this process used it."""


class StoreMissing(QueueError):
    """A command that only reads found no store (it never creates one)."""
