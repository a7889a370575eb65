"""Recurring jobs: `queuectl schedule add NAME --cron EXPR --command CMD`.

Every pool runs a schedule source (in the pool's sources process). Each tick is enqueued
exactly once across all pools and hosts: the store advances a schedule's last tick with a
compare-and-set in the same transaction that inserts the tick's job, whose id
(NAME-YYYYmmddTHHMMSSZ) is unique as well. Cron expressions are read by croniter, in UTC
unless `schedule-timezone` says otherwise.

Missed ticks (no pool was running): policy `once` enqueues one job for the latest missed
tick; `skip` enqueues nothing for a tick more than `schedule-grace` seconds late.
"""
from __future__ import annotations

import time
from typing import Optional

import click

from queuectl import hookimpl
from queuectl.config import Setting, choice, seconds
from queuectl.errors import NotFound, QueueError, StoreReplaced, UsageError
from queuectl._lazy import LazyPattern
from queuectl.models import MAX_INTERVAL, iso

MISSED = ("once", "skip")


@hookimpl
def queuectl_register_settings(register):
    register(Setting("schedule-missed", "once", choice(*MISSED),
                     "Default policy for ticks missed while no pool ran: once (run the latest) or skip."))
    register(Setting("schedule-grace", 60.0, seconds(0.0), "A tick later than this many seconds counts as missed."))
    register(Setting("schedule-timezone", "UTC", time_zone, "Time zone of cron expressions (IANA name)."))
    register(Setting("schedule-interval", 1.0, seconds(0.01, MAX_INTERVAL), "Seconds between checks for due ticks."))


def time_zone(value) -> str:
    """An IANA time zone name that this machine knows (or UTC)."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"expected a time zone name such as Europe/Paris, got {value!r}")
    name = value.strip()
    if name.upper() == "UTC":
        return "UTC"
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except Exception:          # ZoneInfoNotFoundError, ValueError for odd paths, OSError for odd files
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def _zone(queue):
    from datetime import timezone

    name = queue.config.get("schedule-timezone")
    if name.upper() == "UTC":
        return timezone.utc
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except Exception:          # a value stored by another tool: time_zone() refuses it anywhere else
        raise UsageError(f"unknown time zone {name!r} in schedule-timezone") from None


def latest_tick(cron: str, now: float, zone) -> float:
    """The most recent tick at or before ``now``."""
    from datetime import datetime

    from croniter import croniter

    return croniter(cron, datetime.fromtimestamp(now + 0.001, zone)).get_prev(float)


def next_tick(cron: str, after: float, zone) -> float:
    """The first tick after ``after``. Where the clock is set back (summer time ending), the local times
    of the repeated hour come twice: a job at a fixed hour runs at the first of them only, as cron
    runs it (a nightly "30 2 * * *" once that night); one whose hour is a wildcard runs by real time."""
    from datetime import datetime

    from croniter import croniter

    ticks = croniter(cron, datetime.fromtimestamp(after, zone))
    tick = ticks.get_next(float)
    if _fixed_hour(cron):
        while datetime.fromtimestamp(tick, zone).fold:      # the second time this wall-clock time comes
            tick = ticks.get_next(float)
    return tick


def _fixed_hour(cron: str) -> bool:
    fields = cron.split()
    if cron.startswith("@"):
        return fields[0].lower() not in ("@hourly", "@reboot")
    return len(fields) > 1 and not fields[1].startswith("*")


def check_cron(cron: str) -> str:
    """A cron expression that parses and fires at least once from now (``0 0 30 2 *`` never does)."""
    from datetime import datetime, timezone

    from croniter import croniter

    try:
        valid = len(cron) <= 256 and "\0" not in cron and croniter.is_valid(cron)
    except Exception:            # croniter's own errors for odd text
        valid = False
    if not valid:
        raise UsageError(f"not a valid cron expression: {cron[:80]!r}")
    try:
        croniter(cron, datetime.now(timezone.utc)).get_next(float)
    except Exception:            # CroniterBadDateError after searching years ahead
        raise UsageError(f"cron expression {cron!r} never fires") from None
    return cron


def _next_run(schedule: dict, zone) -> Optional[float]:
    try:
        return next_tick(schedule["cron"], max(schedule["last_tick"], time.time()), zone)
    except Exception:            # a cron that never fires (stored by another tool): no next run
        return None


def fire_due(queue, now: float, refused: Optional[dict] = None) -> list[str]:
    """Enqueue the due tick of every schedule; returns the ids this call enqueued.

    A schedule whose stored job the validator refuses (stored by another tool, or valid under an
    older rule) is skipped, its reason put in ``refused`` by name; the others fire."""
    from datetime import datetime, timezone

    zone, grace, fired = _zone(queue), queue.config.get("schedule-grace"), []
    for schedule in queue.store.schedules():
        try:
            due = next_tick(schedule["cron"], schedule["last_tick"], zone)
            tick = latest_tick(schedule["cron"], now, zone) if due <= now else None
        except Exception:        # a cron stored by another tool that never fires: skip it, fire the others
            continue
        if tick is None:
            continue
        late = now - tick > grace
        jobs = []
        if not (late and schedule["missed"] == "skip"):
            stamp = datetime.fromtimestamp(tick, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            spec = dict(schedule["spec"], id=f"{schedule['name']}-{stamp}")
            try:
                jobs = [queue.build_job(spec, source=f"schedule:{schedule['name']}")]
            except QueueError as exc:
                if refused is not None:
                    refused[schedule["name"]] = str(exc)
                continue
        if queue.store.fire_schedule(schedule["name"], schedule["last_tick"], tick, jobs):
            fired.extend(job.id for job in jobs)
    return fired


class ScheduleSource:
    """Checks for due ticks every `schedule-interval` seconds, in a thread of the sources process."""

    def __init__(self, queue):
        import threading     # only in the pool's sources process

        self.queue = queue.clone()      # its own store connection: other sources run in other threads
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="queuectl-schedule", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        told: dict = {}                    # a refused schedule is said once per reason, not every interval
        while not self.stopping.is_set():
            refused: dict = {}
            try:
                fire_due(self.queue, time.time(), refused)
            except StoreReplaced:
                return                     # the pool says so and stops
            except Exception as exc:       # a bad schedule must not stop the others next time
                click.echo(f"queuectl: schedules: {type(exc).__name__}: {exc}", err=True)
            for name, why in refused.items():
                if told.get(name) != why:
                    click.echo(f"queuectl: schedule {name}: its job is refused, so it does not fire: {why}",
                               err=True)
            told = refused
            self.stopping.wait(self.queue.config.get("schedule-interval"))


@hookimpl
def queuectl_job_sources(queue, options):
    return [ScheduleSource(queue)]


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.command import (complete_schedules, emit_json, get_queue, job_options, read_command,
                                  spec_from_options, table, when)

    @cli.group()
    def schedule():
        """Recurring jobs, enqueued by running pools on a cron schedule.

        \b
        Examples:
          queuectl schedule add nightly --cron "0 2 * * *" --command ./backup.sh
          queuectl schedule list
        """

    @schedule.command("add")
    @click.argument("name")
    @click.option("--cron", required=True, metavar="EXPR", help='Cron expression, e.g. "*/5 * * * *".')
    @click.option("--missed", type=click.Choice(MISSED), help="Ticks missed while no pool ran: once or skip.")
    @click.option("--replace", is_flag=True, help="Replace a schedule of the same name.")
    @job_options(exclude=("id", "run_at", "after"))   # a tick's id comes from its name; a fixed time or job fits no tick
    def schedule_add(name, cron, missed, replace, **options):
        """Enqueue a job every time CRON ticks.

        \b
        Examples:
          queuectl schedule add nightly --cron "0 2 * * *" --command ./backup.sh
          queuectl schedule add sync --cron "*/5 * * * *" --command ./sync.sh --unique-key sync --replace
        """
        queue = get_queue()
        if not _name_ok(name):
            raise UsageError(f"schedule name {name[:80]!r} is not valid: {NAME_RULE}")
        spec = spec_from_options(options)
        if "command" not in spec:
            raise UsageError("a schedule needs --command")
        queue.build_job(dict(spec, id=f"{name}-check"))     # validate now, not at the first tick
        now = time.time()
        start = latest_tick(check_cron(cron), now, _zone(queue))
        # Nothing before now is owed: the schedule starts from the latest tick at or before now.
        queue.store.add_schedule(name, cron, spec, missed or queue.config.get("schedule-missed"), start, replace)
        click.echo(f"{name}: next at {iso(next_tick(cron, now, _zone(queue)))}")

    @read_command
    @schedule.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def schedule_list(as_json):
        """Schedules with their next tick.

        \b
        Example:
          queuectl schedule list --json
        """
        queue = get_queue()
        zone = _zone(queue)
        schedules = queue.store.schedules()
        rows = schedule_rows(queue, schedules, zone)
        if as_json:
            emit_json(rows)
            return
        table(({"name": r["name"], "cron": r["cron"], "next": when(_next_run(s, zone)),
                "missed": r["missed"], "command": r["spec"].get("command")}
               for r, s in zip(rows, schedules)), ["name", "cron", "next", "missed", "command"])

    @schedule.command("remove")
    @click.argument("name", shell_complete=complete_schedules)
    def schedule_remove(name):
        """Remove a schedule (jobs it already enqueued stay).

        \b
        Example:
          queuectl schedule remove nightly
        """
        if not _name_ok(name):
            raise NotFound(f"no schedule named {name[:80]!r}")
        if not get_queue().store.remove_schedule(name):
            raise NotFound(f"no schedule named {name!r}")
        click.echo(f"{name} removed")


_NAME = LazyPattern(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}")
NAME_RULE = "use 1-64 letters, digits and ._:@+- starting with a letter or digit"


def _name_ok(name: str) -> bool:
    """A schedule name: the start of its ticks' job ids, so of their characters (the validator checks
    the whole id)."""
    return _NAME.fullmatch(name) is not None


def schedule_rows(queue, schedules: Optional[list] = None, zone=None) -> list[dict]:
    """Schedules with their next run, times as ISO-8601 (for `schedule list` and the dashboard)."""
    from queuectl.models import iso

    zone = _zone(queue) if zone is None else zone
    schedules = queue.store.schedules() if schedules is None else schedules
    return [dict(s, next_run=iso(_next_run(s, zone)), last_tick=iso(s["last_tick"]), created_at=iso(s["created_at"]))
            for s in schedules]
