"""The built-in dead letter queue: `queuectl dlq list/retry`, and a line when a job dies."""
from __future__ import annotations

import click

from queuectl import hookimpl
from queuectl.errors import UsageError
from queuectl.models import DEAD, RANGES


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.command import Integer, complete_job_ids, get_queue, parse_since, read_command, render_jobs

    @cli.group()
    def dlq():
        """The dead letter queue: jobs that spent their retries.

        \b
        Examples:
          queuectl dlq list
          queuectl dlq retry --all --exit-code 75
        """

    @read_command
    @dlq.command("list")
    @click.option("--limit", type=Integer(), help="At most this many jobs.")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
    def dlq_list(limit, as_json):
        """Dead jobs, oldest first.

        \b
        Example:
          queuectl dlq list --json
        """
        render_jobs(get_queue().list(DEAD, limit), as_json)

    @dlq.command("retry")
    @click.argument("job_ids", nargs=-1, shell_complete=complete_job_ids)
    @click.option("--all", "everything", is_flag=True, help="Every dead job (narrow it with the filters).")
    @click.option("--exit-code", type=Integer(RANGES["exit_code"]),
                  help="With --all: only jobs whose last exit code is this (0-255).")
    @click.option("--since", metavar="DURATION|TIME",
                  help="With --all: only jobs that died since: 1h, 2d or an ISO-8601 time with a zone.")
    @click.option("--dry-run", is_flag=True, help="Print what would be retried; change nothing.")
    def dlq_retry(job_ids, everything, exit_code, since, dry_run):
        """Move dead jobs back to pending with a fresh retry budget (history is kept).

        \b
        Examples:
          queuectl dlq retry 3f2a 9c1e
          queuectl dlq retry --all --since 1h --dry-run
        """
        queue = get_queue()
        if bool(job_ids) == everything:
            raise UsageError("give job ids, or --all (with --exit-code/--since filters)")
        if not everything and (exit_code is not None or since):
            raise UsageError("--exit-code and --since filter --all")
        if everything:
            after = parse_since(since)
            job_ids = [j.id for j in dead_matching(queue, exit_code, after)]
        for job_id in job_ids:
            if dry_run:
                click.echo(f"{queue.get(job_id).id} would be retried")
            else:
                click.echo(f"{queue.retry(job_id).id} pending")


def dead_matching(queue, exit_code=None, after=None) -> list:
    """Dead jobs whose last exit code is ``exit_code`` and that died at or after ``after`` (when given)."""
    return [j for j in queue.list(DEAD) if (exit_code is None or j.exit_code == exit_code)
            and (after is None or j.updated_at >= after)]
