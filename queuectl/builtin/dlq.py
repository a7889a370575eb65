"""The built-in dead letter queue: `queuectl dlq list/retry`, and a line when a job dies."""
from __future__ import annotations

import click

from queuectl import hookimpl
from queuectl.models import DEAD


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.cli import get_queue, render_jobs

    @cli.group()
    def dlq():
        """The dead letter queue: jobs that spent their retries."""

    @dlq.command("list")
    @click.option("--limit", type=click.IntRange(min=0), help="At most this many jobs.")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
    def dlq_list(limit, as_json):
        """Dead jobs, oldest first."""
        render_jobs(get_queue().list(DEAD, limit), as_json)

    @dlq.command("retry")
    @click.argument("job_ids", nargs=-1, required=True)
    def dlq_retry(job_ids):
        """Move dead jobs back to pending with a fresh retry budget (history is kept)."""
        queue = get_queue()
        for job_id in job_ids:
            job = queue.retry(job_id)
            click.echo(f"{job.id} pending")
