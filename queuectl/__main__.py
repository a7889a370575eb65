"""`queuectl` (the console script) and `python -m queuectl`.

A Ctrl-C while the command's modules load (its first tens of milliseconds, before the CLI catches it
itself) exits 130 like one that comes later, not with a traceback of the import it interrupted.
"""
import sys


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
