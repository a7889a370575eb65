"""The built-in dashboard plugin: `queuectl dashboard` (a web UI) and `queuectl metrics` (Prometheus).

The web parts live in queuectl.builtin.web and need the `web` extra (Starlette, uvicorn, Jinja2,
prometheus-client); they are imported only when one of these commands runs, so the rest of
queuectl neither needs nor loads them.
"""
from __future__ import annotations

import sys

import click

from queuectl import hookimpl
from queuectl.errors import QueueError

EXTRA_HINT = "pip install 'queuectl[web]'"


def _web(module: str):
    """A module of queuectl.builtin.web, or one error line saying how to install the extra."""
    import importlib

    try:
        return importlib.import_module(f"queuectl.builtin.web.{module}")
    except ImportError as exc:
        raise QueueError(f"the dashboard and metrics need the web extra ({exc.name or exc} is missing): "
                         f"{EXTRA_HINT}") from None


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.command import get_queue, read_command

    @read_command            # a typo in --db is an error, not a dashboard over a new empty store
    @cli.command()
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to listen on (loopback unless you say otherwise).")
    @click.option("--port", type=click.IntRange(0, 65535), default=8754, show_default=True,
                  help="Port to listen on (0: any free port).")
    def dashboard(host, port):
        """Serve the web dashboard: overview, jobs, one job, the DLQ, schedules, and /metrics.

        \b
        Examples:
          queuectl dashboard                       # http://127.0.0.1:8754/?token=... is printed
          queuectl dashboard --port 9000
        """
        app = _web("app")
        queue = get_queue()
        queue.store                      # open (or create) the store now: a bad store is one error line
        import secrets

        token = secrets.token_urlsafe(24)

        def announce(url: str, token: str) -> None:
            if not app.is_loopback(host):
                click.echo(f"queuectl: warning: the dashboard listens on {host}, reachable from other machines; "
                           f"anyone with the token can retry and cancel jobs", err=True)
            click.echo(f"queuectl dashboard: {url}?token={token}", err=True)
            click.echo(f"queuectl dashboard: Prometheus metrics at {url}metrics (no token); Ctrl-C stops",
                       err=True)
            sys.stderr.flush()

        app.serve(queue, host, port, token, announce)

    @read_command
    @cli.command()
    def metrics():
        """Print the Prometheus metrics once (for node_exporter's textfile collector, or cron).

        \b
        Example:
          queuectl metrics > /var/lib/node_exporter/queuectl.prom.$$ && mv /var/lib/node_exporter/queuectl.prom.$$ /var/lib/node_exporter/queuectl.prom
        """
        text = _web("metrics").render(get_queue())
        click.echo(text.decode(), nl=False)
