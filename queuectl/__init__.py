"""queuectl: a background job queue for shell commands, built on pluggy."""
from .errors import JobValidationError, NotFound, QueueError, UsageError
from .hookspecs import hookimpl
from .models import Attempt, ExecResult, Job, RetryDecision
from .queue import Queue, get_job_logs, open_queue

__all__ = ["hookimpl", "Queue", "open_queue", "get_job_logs", "Job", "Attempt", "ExecResult",
           "RetryDecision", "QueueError", "UsageError", "JobValidationError", "NotFound"]
__version__ = "0.1.0"
