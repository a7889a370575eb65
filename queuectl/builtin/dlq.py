"""The built-in dead letter queue: `queuectl dlq list/retry`, and a line when a job dies."""
from __future__ import annotations

import click

from queuectl import hookimpl
from queuectl.errors import UsageError
from queuectl.models import DEAD, parse_time


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.command import get_queue, render_jobs

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
    @click.argument("job_ids", nargs=-1)
    @click.option("--all", "everything", is_flag=True, help="Every dead job (narrow it with the filters).")
    @click.option("--exit-code", type=int, help="With --all: only jobs whose last exit code is this.")
    @click.option("--since", help="With --all: only jobs that died at or after this time (ISO-8601 with zone).")
    @click.option("--dry-run", is_flag=True, help="Print what would be retried; change nothing.")
    def dlq_retry(job_ids, everything, exit_code, since, dry_run):
        """Move dead jobs back to pending with a fresh retry budget (history is kept)."""
        queue = get_queue()
        if bool(job_ids) == everything:
            raise UsageError("give job ids, or --all (with --exit-code/--since filters)")
        if not everything and (exit_code is not None or since):
            raise UsageError("--exit-code and --since filter --all")
        if everything:
            try:
                after = parse_time(since) if since else None
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            job_ids = [j.id for j in dead_matching(queue, exit_code, after)]
        for job_id in job_ids:
            if dry_run:
                queue.get(job_id)
                click.echo(f"{job_id} would be retried")
            else:
                click.echo(f"{queue.retry(job_id).id} pending")


def dead_matching(queue, exit_code=None, after=None) -> list:
    """Dead jobs whose last exit code is ``exit_code`` and that died at or after ``after`` (when given)."""
    return [j for j in queue.list(DEAD) if (exit_code is None or j.exit_code == exit_code)
            and (after is None or j.updated_at >= after)]
