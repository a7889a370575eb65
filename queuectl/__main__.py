"""`queuectl` (the console script) and `python -m queuectl`.

A Ctrl-C while the command's modules load and it sets itself up (its first tens of milliseconds, before
the CLI catches it itself) exits 130 like one that comes later, not with a traceback of the import it interrupted.
"""
import sys


def main() -> None:
    try:
        from .cli import main as run

        run()                  # (catches a Ctrl-C itself once its own set-up is done; this covers that too)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
