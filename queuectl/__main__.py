"""`queuectl` (the console script) and `python -m queuectl`.

A Ctrl-C while the command's modules load and it sets itself up (its first tens of milliseconds, before
the CLI catches it itself) exits 130 like one that comes later, not with a traceback of the import it
interrupted. That includes a KeyboardInterrupt that Python 3.11 re-raises as another exception: one that
lands in a class body's ``__set_name__`` (``platform.uname_result`` while ``uuid`` loads) comes out as
"RuntimeError: Error calling __set_name__", the interrupt as its cause.
"""
import sys


def main() -> None:
    try:
        from .cli import main as run

        run()                  # (catches a Ctrl-C itself once its own set-up is done; this covers that too)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:
        if _interrupted(exc):
            sys.exit(130)
        raise


def _interrupted(exc: BaseException) -> bool:
    """Was ``exc`` raised because of a KeyboardInterrupt (its cause, or the cause of its cause...)?"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    main()
