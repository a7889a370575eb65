"""The Queue: the one facade that the CLI, the Python API, workers and plugins use."""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from . import models
from .config import Config, Setting
from .errors import Conflict, JobValidationError, NotFound, PluginError, QueueError, StoreMissing, UsageError
from .models import Attempt, Job
from ._lazy import Deferred     # a built-in's value, checked when it was recorded
from .plugins import EachCall, call_each, call_registrations, get_plugin_manager, plugin_warning


AMBIGUOUS_SHOWN = 10            # candidates named when a job id prefix is ambiguous
#: Fields `queuectl edit` changes, and the states a job may be edited in (it is not running).
EDITABLE = ("command", "argv", "env", "cwd", "timeout", "labels")
EDITABLE_STATES = (models.PENDING, models.FAILED, models.DEAD, models.CANCELLED)
RETRYABLE = (models.COMPLETED, models.DEAD, models.CANCELLED)


_INPUT = frozenset(models.INPUT_FIELDS)
_ID_POOL: list = []     # ids drawn ahead; emptied in a forked child, which must not repeat its parent's


def new_job_id() -> str:
    """64 random bits from the OS, like the uuid4 prefix it replaces; drawn 64 ids at a time, not one
    getrandom call per job."""
    try:
        return _ID_POOL.pop()
    except IndexError:
        drawn = os.urandom(8 * 64).hex()
        _ID_POOL.extend(drawn[i:i + 16] for i in range(16, len(drawn), 16))
        return drawn[:16]


os.register_at_fork(after_in_child=_ID_POOL.clear)


class Queue:
    """A queue bound to one configuration, one plugin manager and (lazily) one store."""

    def __init__(self, config: Config, pm):
        self.config = config
        self.pm = pm
        self.storages: dict[str, tuple] = {}
        self.executors: dict[str, Any] = {}
        self.job_fields: dict[str, tuple] = {}
        self._store = None
        self._opening = False
        self.patient = False          # True in workers and pools: wait out a busy store, however long
        self.create_store = True      # False for read commands: a missing store is an error, not a new one
        self._validators = EachCall(pm, "queuectl_validate_job", ("job", "queue"))
        self._collect_registrations()
        config.check_file()
        config.check_env()
        config.store_loader = self._stored_settings

    def _stored_settings(self) -> Optional[dict]:
        if self._opening:
            return None               # settings read while the store opens come from elsewhere
        try:
            return self.store.get_settings()
        except StoreMissing:
            return None               # a read command on no store: nothing is stored (and nothing created)

    @classmethod
    def open(cls, config: Optional[str] = None, db: Optional[str] = None, plugins_dir: Optional[str] = None,
             flags: Optional[dict] = None, plugins: Iterable[tuple[str, Any]] = (), env=None) -> "Queue":
        """Open the queue the way the CLI does: config file, environment, flags, plugins."""
        flags = dict(flags or {})
        flags.update({"db": db, "plugins-dir": plugins_dir})
        cfg = Config.load(config, flags, env)
        if cfg.maybe_foreign():
            # A ./config.yaml none of whose keys queuectl or an installed plugin knows is another
            # tool's (a web app's "name:"): pass it over, and do not load plugins/ beside it.
            fallback = cls._build(Config.load(config, flags, env, skip_local=True), plugins)
            if not cfg.written_keys() & set(fallback.config.settings):
                fallback.config.ignored_path = cfg.file
                return fallback
            fallback.close()
            if cfg.unreadable is not None:       # names a plugin's setting: ours, with a mistake
                raise cfg.unreadable
        return cls._build(cfg, plugins)

    @classmethod
    def _build(cls, cfg: Config, plugins: Iterable[tuple[str, Any]]) -> "Queue":
        plugins_folder = cfg.get("plugins-dir")
        if plugins_folder is None and cfg.file is not None:
            beside = os.path.join(cfg.base_folder, "plugins")
            if os.path.isdir(beside):
                plugins_folder = beside
        pm = get_plugin_manager(plugins_folder, cfg.get("disable-plugins"), extra=plugins)
        return cls(cfg, pm)

    # --- plugin registrations --------------------------------------------------------

    def _collect_registrations(self) -> None:
        def named(table: dict, kind: str, value_key: str):
            # every entry is (value, options, plugin name)
            def make(plugin: str):
                def register(name: str, value: Any = None, **options):
                    value = options.pop(value_key, value)
                    if name in table:
                        raise PluginError(f"{kind} {name!r} is registered twice (by {table[name][2]} and {plugin}); "
                                          f"block one with disable-plugins")
                    if kind == "executor" and not isinstance(value, Deferred) and \
                            not all(callable(getattr(value, m, None)) for m in ("start", "reap")):
                        raise PluginError(f"executor {name!r} of plugin {plugin} has no start() and reap() methods")
                    table[name] = (value, options, plugin)
                return register
            return make

        def settings(plugin: str):
            def register(setting: Setting):
                if setting.plugin == "core":
                    setting.plugin = plugin
                self.config.register(setting)
            return register

        call_registrations(self.pm, "queuectl_register_storage", named(self.storages, "storage backend", "factory"))
        call_registrations(self.pm, "queuectl_register_executors", named(self.executors, "executor", "executor"))
        call_registrations(self.pm, "queuectl_register_job_fields", named(self.job_fields, "job field", "check"))
        call_registrations(self.pm, "queuectl_register_settings", settings)
        clash = set(self.job_fields) & (set(models.INPUT_FIELDS) | set(models.PROTECTED_FIELDS))
        if clash:
            raise PluginError(f"job field {sorted(clash)[0]!r} belongs to the core and cannot be registered")

    def clone(self) -> "Queue":
        """The same queue with its own store connection, for another thread (a job source)."""
        twin = object.__new__(Queue)
        twin.__dict__.update(self.__dict__)
        twin.config = self.config.copy()
        twin._store, twin._opening = None, False
        twin.config.store_loader = twin._stored_settings
        return twin

    def executor(self, name: str):
        try:
            return self.executors[name][0]
        except KeyError:
            raise QueueError(f"no executor named {name!r} is registered") from None

    def report(self, hook: str, **kwargs) -> None:
        """Call a reporting hook; a failing reporter is logged and never fails the job."""
        for _ in call_each(self.pm, hook, kwargs, on_error=lambda plugin, exc: plugin_warning(plugin, hook, exc)):
            pass

    # --- the store ---------------------------------------------------------------------

    @property
    def db(self) -> str:
        db = self.config.get("db")
        if db:
            return db
        return os.path.join(models_default_dir(), "queue.db")

    @property
    def store(self):
        if self._store is None:
            db = self.db
            if "://" in db:
                scheme = db.split("://", 1)[0].split("+", 1)[0]
                matches = [n for n, entry in self.storages.items() if scheme in entry[1].get("schemes", ())]
                if not matches:
                    raise UsageError(f"no storage backend handles {scheme}:// URLs "
                                     f"(for PostgreSQL: pip install 'queuectl[postgres]')")
                backend = matches[0]
            else:
                backend = self.config.get("storage")
            if backend not in self.storages:
                raise UsageError(f"storage backend {backend!r} is not registered (see 'queuectl plugins')")
            self._opening = True
            try:
                store = self.storages[backend][0](db, self)
                if self.patient:
                    store.lock_timeout = None
                store.init()
            finally:
                self._opening = False
            self._store = store
            self.config.refresh()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self.config.refresh()

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- jobs ----------------------------------------------------------------------------

    def validate(self, fields: dict) -> None:
        """Every validator plugin on these fields: a refusal is its JobValidationError, a plugin's bug
        one line naming it (PluginError); either way nothing is stored."""
        self._validators(fields, self)

    def build_job(self, spec: Any, source: Optional[str] = None, defaults: Optional[dict] = None) -> Job:
        """Validate a job spec through the ingestion hooks and fill in defaults.

        ``defaults`` (from :meth:`job_defaults`) lets a batch look its defaults up once.
        """
        if not isinstance(spec, dict):
            raise JobValidationError("a job must be a mapping of fields (a JSON object)")
        defaults = defaults or self.job_defaults()
        fields = dict(spec)
        self._validators(fields, self)
        now = models.now()
        get = fields.get
        max_retries = get("max_retries")
        # the fields plugins declared: what is left once the core's own are taken out
        extra = {} if _INPUT.issuperset(fields) else {k: v for k, v in fields.items() if k not in _INPUT}
        # positional, in the order of Job's fields (keywords cost more than the rest of this method):
        # id, command, state, attempts, max_retries, created_at, updated_at, run_at, priority, queue,
        # executor, cwd, env, timeout, source, fields, tries, unique_key, after, waiting_on,
        # cancel_requested, labels, argv
        return Job(
            get("id") or new_job_id(), fields["command"], models.PENDING, 0,
            defaults["max_retries"] if max_retries is None else max_retries,
            now, now, get("run_at") or now + (get("delay") or 0.0), get("priority") or 0,
            get("queue") or "default", get("executor") or "shell", get("cwd") or defaults["cwd"],
            get("env") or {}, get("timeout"), source, extra, 0, get("unique_key"), get("after") or [], 0,
            False, get("labels") or {}, get("argv"),
        )

    def job_defaults(self) -> dict:
        """What a job gets when it does not say: the current folder and the max-retries setting."""
        return {"cwd": os.getcwd(), "max_retries": self.config.get("max-retries")}

    def enqueue(self, spec: Optional[dict] = None, source: Optional[str] = "python", **fields) -> str:
        """Enqueue one job; returns its id."""
        if spec is not None and not isinstance(spec, dict):
            raise JobValidationError("a job must be a mapping of fields (a JSON object)")
        return self.enqueue_many([dict(spec or {}, **fields)], source=source)[0]

    def enqueue_many(self, specs: Iterable[dict], source: Optional[str] = "python",
                     receipt: Optional[dict] = None) -> list[str]:
        """Enqueue a batch atomically: every job is validated first, then all are stored or none.

        ``receipt`` is recorded with the jobs in the same transaction (see Store.add_jobs).
        """
        if isinstance(specs, (str, bytes, dict)) or not hasattr(specs, "__iter__"):
            raise JobValidationError(f"enqueue_many takes a list of jobs, got {type(specs).__name__}")
        if source is not None and not isinstance(source, str):
            raise UsageError(f"source must be a string, got {type(source).__name__}")
        defaults = self.job_defaults()
        jobs = [self.build_job(spec, source, defaults) for spec in specs]
        check_no_cycle(jobs)
        if not jobs:
            return []
        ids = self.store.add_jobs(jobs, receipt=receipt)
        self.store.notify()
        return ids

    def resolve(self, ref: str) -> str:
        """The id of the job that ``ref`` names: an id, or a unique prefix of one (as git takes commits).

        An exact id always wins; an ambiguous prefix is refused with the candidates it matches.
        """
        if isinstance(ref, str):
            ref = ref.strip().rstrip("…")     # an id copied from a table cut to the terminal's width
        if isinstance(ref, str) and not ref:
            raise UsageError("a job id cannot be empty")
        ref = _job_id(ref)
        find = getattr(self.store, "find_ids", None)
        if find is None or not ref.isascii():    # ids are ASCII: other text can only be an exact id
            return ref
        ids = find(ref, AMBIGUOUS_SHOWN + 1)
        if ref in ids or len(ids) == 1:
            return ref if ref in ids else ids[0]
        if not ids:
            raise NotFound(f"no job with id {ref!r}")
        more = ", ..." if len(ids) > AMBIGUOUS_SHOWN else ""
        raise UsageError(f"job id prefix {ref!r} is ambiguous: {', '.join(ids[:AMBIGUOUS_SHOWN])}{more}")

    def get(self, job_id: str) -> Job:
        """A job by its id or a unique prefix of it."""
        job = self.store.get_job(self.resolve(job_id))
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        return job

    def list(self, state: Optional[str] = None, limit: Optional[int] = None, offset: int = 0, *,
             queue: Optional[str] = None, labels: Optional[dict] = None, grep: Optional[str] = None,
             since: Optional[float] = None, last: Optional[int] = None) -> list[Job]:
        """Jobs in enqueue order; ``last``: only the newest N. Filters: see Store.list_jobs."""
        if state is not None and state not in models.STATES:
            raise UsageError(f"unknown state {state!r} (one of: {', '.join(models.STATES)})")
        limit = None if limit is None else _in_range("count", limit, "limit")
        offset = _in_range("count", offset, "offset")
        last = None if last is None else _in_range("count", last, "last")
        since = None if since is None else _in_range("run_at", since, "since")
        queue = None if queue is None else _queue_name(queue)
        grep = None if grep is None else _text(grep, "grep", line=False)
        if labels is not None:
            if not isinstance(labels, dict):
                raise UsageError("labels must be a mapping of label names to values (None: any value)")
            labels = {_label_name(k): None if v is None else _text(v, f"label {k}") for k, v in labels.items()}
        if last is not None and (limit is not None or offset):
            raise UsageError("give --last, or --limit/--offset, not both")
        filters = {k: v for k, v in (("queue", queue), ("labels", labels), ("grep", grep), ("since", since))
                   if v not in (None, {}, "")}
        if last is not None:
            filters["newest"] = True
            limit = last
        return self.store.list_jobs(state, limit, offset, **filters)

    def edit(self, job_id: str, changes: dict, retry: bool = False) -> Job:
        """Change the command, argv, env, cwd, timeout or labels of a job that is not running.

        Pending, failed, dead and cancelled jobs may be edited; with ``retry`` the job (completed,
        dead or cancelled) is also run again, in the same transaction. The values before are kept
        in the job's ``edits`` and its attempts stay.
        """
        job = self.get(job_id)
        if job.state == models.COMPLETED and not retry:     # the store refuses it too; this says what to do
            raise Conflict(f"job {job.id!r} is completed: to change it and run it again, "
                             f"use queuectl retry {job.id} with the same options")
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise UsageError(f"{unknown[0]!r} cannot be edited (only {', '.join(EDITABLE)})")
        checked = self._check_edit(job, changes)
        before = {k: getattr(job, k) for k in checked if getattr(job, k) != checked[k]}
        edit = {"at": models.iso(models.now()), "before": before}
        retry_from = RETRYABLE if retry else None
        edited = self.store.edit_job(job.id, RETRYABLE if retry else EDITABLE_STATES, checked, edit, retry_from)
        if retry or edited.state == models.PENDING:
            self.store.notify()
        return edited

    def _check_edit(self, job: Job, changes: dict) -> dict:
        """The full new values, checked by the validators as a job with them would be.

        A new command runs by the shell, a new argv without one; env and labels replace the old ones.
        """
        if "command" in changes:
            spec = {"command": changes["command"]}
        elif changes.get("argv") is not None:
            spec = {"argv": changes["argv"]}
        else:
            spec = {"argv": job.argv} if job.argv is not None else {"command": job.command}
        spec.update({k: changes[k] for k in ("env", "cwd", "timeout", "labels") if changes.get(k) is not None})
        self.validate(spec)
        checked = {"command": spec["command"], "argv": spec.get("argv")}
        checked.update({k: spec.get(k) for k in ("env", "cwd", "timeout", "labels") if k in changes})
        return checked

    def attempts(self, job_id: str, attempt: Optional[int] = None) -> list[Attempt]:
        job_id = self.get(job_id).id
        attempt = None if attempt is None else _in_range("attempt", attempt, "attempt")
        found = self.store.attempts(job_id, attempt)
        if attempt is not None and not found:
            raise NotFound(f"job {job_id!r} has no attempt {attempt}")
        return found

    def logs(self, job_id: str, attempt: Optional[int] = None) -> list[dict]:
        """Every attempt as a dict; the running one (``running`` true) with the output it printed so far."""
        from . import output

        live = output.running_attempt(self, self.get(job_id))
        if live is not None and attempt == live["attempt"]:
            return [live]
        entries = [dict(a.to_dict(), running=False) for a in self.attempts(job_id, attempt)]
        return entries + ([live] if live is not None and attempt is None else [])

    def attempt_list(self, job_id: str, after: int = 0, before: Optional[int] = None, limit: int = 100) -> list[dict]:
        """The newest ``limit`` finished attempts numbered after ``after`` and before ``before``, oldest first,
        as logs entries without their output: ``stdout_bytes`` and ``stderr_bytes`` give its size instead;
        then the running attempt, if any and within the bounds (``running`` true, its sizes None)."""
        from . import output

        job = self.get(job_id)
        job_id = job.id
        after = _in_range("count", after, "after")
        before = models.INT64_MAX if before is None else _in_range("attempt", before, "before")
        limit = _in_range("count", limit, "limit")
        if hasattr(self.store, "attempt_summaries"):
            rows = self.store.attempt_summaries(job_id, after, before, limit)
        else:                      # a third-party store: read whole, then drop the output
            found = [a for a in self.store.attempts(job_id) if after < a.attempt < before][-limit:][::-1]
            rows = [(a, len(a.stdout), len(a.stderr)) for a in found]
        entries = []
        for attempt, out, err in reversed(rows):
            entry = {k: v for k, v in attempt.to_dict().items() if k not in ("stdout", "stderr")}
            entries.append(dict(entry, running=False, stdout_bytes=out, stderr_bytes=err))
        live = output.running_attempt(self, job, with_output=False)
        recorded = {a.attempt for a, *_ in rows}       # it may have ended since the job was read
        if live is not None and after < live["attempt"] < before and live["attempt"] not in recorded:
            entries.append(dict({k: v for k, v in live.items() if k not in ("stdout", "stderr")},
                                stdout_bytes=None, stderr_bytes=None))
        return entries

    def output_since(self, job_id: str, attempt: int, cursor: int = 0) -> tuple[list[dict], int]:
        """Chunks of an attempt's live output stored after ``cursor`` (0: from the start), and the new cursor.

        Each chunk: ``stream``, ``offset`` (bytes of that stream before it) and ``data`` (bytes). A gap
        between one chunk's end and the next one's offset is output the cap dropped. Chunks are kept
        while the attempt runs and for a minute after.
        """
        from . import output

        job_id = self.get(job_id).id
        if not output.supported(self.store):
            return [], cursor
        rows = self.store.output_chunks(job_id, attempt, cursor)
        return ([{"stream": stream, "offset": offset, "data": data} for _, stream, offset, data in rows],
                rows[-1][0] if rows else cursor)

    def follow(self, job_id: str):
        """Events of a job's output as it is produced, until the job is terminal (see queuectl.output.follow)."""
        from . import output

        return output.follow(self, self.get(job_id).id)

    def retry(self, job_id: str, states: tuple = (models.DEAD,)) -> Job:
        """Dead (or another finished state) -> pending with a fresh retry budget; the history stays."""
        states = (states,) if isinstance(states, str) else states
        if not isinstance(states, (list, tuple, set, frozenset)) or not states or \
                any(state not in models.FINISHED_STATES for state in states):
            raise UsageError(f"only finished jobs can be retried ({', '.join(models.FINISHED_STATES)})")
        job_id = self.get(job_id).id
        job = self.store.retry_job(job_id, states)
        self.store.notify()
        return job

    def cancel(self, job_id: str) -> str:
        """A pending job never runs; a running job's processes are stopped by its worker."""
        return self.store.cancel_job(self.resolve(job_id))

    def set_queue(self, name: str, concurrency=..., paused: Optional[bool] = None) -> dict:
        name = _queue_name(name)
        if concurrency is not ... and concurrency is not None:
            concurrency = _in_range("concurrency", concurrency, "a queue limit")
        if paused is not None and not isinstance(paused, bool):
            raise UsageError(f"paused must be True or False, got {paused!r}")
        row = self.store.set_queue(name, concurrency=concurrency, paused=paused)
        self.store.notify()
        return row

    def queues(self) -> list[dict]:
        return self.store.queues()

    def purge(self, states: Iterable[str], older_than: float) -> int:
        """Delete finished jobs last updated more than ``older_than`` seconds ago (0 to ten years)."""
        if not isinstance(states, (list, tuple, set, frozenset)):
            raise UsageError("states must be a list of finished states")
        states = tuple(states)
        if not states:
            raise UsageError("give at least one state to purge")
        if isinstance(older_than, str):
            try:
                older_than = models.parse_duration(older_than)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        older_than = _in_range("age", older_than, "older_than")
        for state in states:
            if state not in models.FINISHED_STATES:
                raise UsageError(f"only finished jobs can be purged ({', '.join(models.FINISHED_STATES)}), "
                                 f"not {state!r}")
        return self.store.purge(states, models.now() - older_than)

    def stats(self) -> dict:
        return self.store.stats()

    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in models.STATES}
        counts.update(self.store.counts())
        return counts

    def workers(self) -> list[dict]:
        return self.store.workers()

    def latest_failures(self, limit: int = 5) -> list[Job]:
        """Failed (waiting for a retry) and dead jobs, the most recently changed first."""
        if not hasattr(self.store, "recent_jobs"):
            return []
        found = [job for state in (models.FAILED, models.DEAD) for job in self.store.recent_jobs(state, limit)]
        return sorted(found, key=lambda job: job.updated_at, reverse=True)[:limit]

    def request_stop(self) -> int:
        """Ask every live pool to stop; returns how many were asked (0: no pool is running)."""
        self.forget_dead_workers()
        count = self.store.request_stop()
        self.store.notify()
        return count

    # --- the dashboard and /metrics: reads that never scan the jobs -------------------------------

    def _reader(self, verb: str):
        """A store verb the dashboard needs; a backend written before them gets one clear error."""
        found = getattr(self.store, verb, None)
        if found is None:
            raise QueueError(f"the storage backend {type(self.store).__name__} has no {verb}(), which the "
                             f"dashboard and metrics need (see queuectl/store.py)")
        return found

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Jobs per queue and state, from counters the store keeps current: {queue: {state: n}}."""
        return self._reader("queue_counts")()

    def queue_settings(self) -> list[dict]:
        """Queues with a concurrency limit or a pause set: name, concurrency, paused (no counting)."""
        return self._reader("queue_settings")()

    def oldest_pending(self) -> dict[str, float]:
        """Per queue, seconds since its earliest-enqueued pending job was enqueued."""
        return self._reader("oldest_pending")()

    def run_totals(self) -> dict:
        """Every attempt so far: runs, failed, duration_sum and the duration histogram's (bucket, n) rows."""
        return self._reader("run_totals")()

    def series(self, window: float = 3600, step: int = 60) -> list[dict]:
        """Attempts over the last ``window`` seconds (at most a day) in bins of ``step`` seconds (a
        multiple of 60), oldest first: t, runs, failed, p50, p95, p99 (durations in seconds)."""
        if not 0 < window <= 86400 or step <= 0 or step % 60:
            raise UsageError("a series covers at most a day, in steps of whole minutes")
        return self._reader("series")(window, step)

    def page(self, state: Optional[str] = None, queue: Optional[str] = None, text: Optional[str] = None,
             before: Optional[int] = None, limit: int = 50) -> dict:
        """Newest jobs first, filtered, by keyset: {"jobs": [...], "next": cursor or None}."""
        if state is not None and state not in models.STATES:
            raise UsageError(f"unknown state {state!r} (one of: {', '.join(models.STATES)})")
        if not 0 < limit <= 1000:
            raise UsageError("a page holds 1 to 1000 jobs")
        queue = None if queue is None else _queue_name(queue)
        text = None if text is None else _text(text, "the text filter", line=False, limit=PAGE_TEXT_BYTES)
        before = None if before is None else _in_range("last", before, "the page cursor")
        return self._reader("page_jobs")(state=state, queue=queue, text=text, before=before, limit=limit)

    def _dead_workers(self, host: Optional[str] = None) -> tuple[list, list]:
        """(live rows, ids of dead rows): a row on this host whose process is gone is dead (a pool
        killed whole leaves its rows behind); other hosts' rows count as live, only they can tell."""
        from .process import host_id, pid_alive

        host = host or host_id(self)
        live, dead = [], []
        for row in self.store.workers():
            gone = row["host"] == host and not pid_alive(row["pid"], row["pid_start"])
            if gone:
                dead.append(row["id"])
            else:
                live.append(row)
        return live, dead

    def live_workers(self) -> list[dict]:
        """Worker and pool rows, without those of dead processes on this host (a read: nothing is removed)."""
        return self._dead_workers()[0]

    def forget_dead_workers(self, host: Optional[str] = None) -> int:
        """Remove the rows of dead workers and pools on this host; returns how many."""
        dead = self._dead_workers(host)[1]
        for worker_id in dead:
            self.store.remove_worker(worker_id)
        return len(dead)

    def status(self) -> dict:
        """What `status` shows; times are ISO-8601 UTC, as everywhere in JSON."""
        data = {
            "config_file": self.config.file,
            "store": self.store.describe(),
            "counts": self.counts(),
            "workers": [dict(w, started_at=models.iso(w["started_at"]), heartbeat_at=models.iso(w["heartbeat_at"]))
                        for w in self.live_workers()],
            "running": self.running(),
            "plugins": self.plugin_status(),
        }
        if getattr(self.config, "ignored_path", None):
            data["ignored_config"] = str(self.config.ignored_path)
        return data

    def running(self) -> list[dict]:
        """Jobs being run now: id, command, queue, worker, host, pid, started_at and elapsed seconds."""
        now = models.now()
        return [{"id": j.id, "command": j.command, "queue": j.queue, "worker": j.lease.owner, "host": j.lease.host,
                 "pid": j.lease.pid, "started_at": models.iso(j.lease.started_at),
                 "elapsed": round(max(0.0, now - j.lease.started_at), 3) if j.lease.started_at else None}
                for j in self.store.leases() if j.lease is not None]

    def plugin_status(self) -> dict:
        sections = {}
        def failed(plugin: str, exc: Exception) -> None:
            plugin_warning(plugin, "queuectl_status_info", exc)
        for plugin, result in call_each(self.pm, "queuectl_status_info", {"queue": self}, on_error=failed):
            if result is not None and not isinstance(result, dict):
                failed(plugin, TypeError(f"returned {type(result).__name__}, not a dict of sections"))
                continue
            sections.update(result or {})
        return sections

    # --- settings --------------------------------------------------------------------------

    def config_set(self, key: str, value: Any) -> Any:
        """Store a setting after its parser accepted it (the same check as config.yaml and the environment)."""
        setting = self.config.setting(key)
        if setting.file_only:
            raise UsageError(f"{setting.name} can only be set in config.yaml "
                             f"(it says where the store and plugins are)")
        parsed = self.config.parse(setting.name, value)
        self.store.set_setting(setting.name, parsed)
        self.config.refresh()
        return parsed

    def config_unset(self, key: str) -> bool:
        setting = self.config.setting(key)
        removed = self.store.unset_setting(setting.name)
        self.config.refresh()
        return removed


def _in_range(kind: str, value: Any, name: str) -> Any:
    try:
        return models.RANGES[kind].check(value, name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not job_id or len(job_id) > 1024:
        raise UsageError(f"not a job id: {job_id!r}"[:120])
    return _text(job_id, "a job id")


#: Bytes of a job page's text filter (Queue.page): a search is typed or pasted, not a whole script.
PAGE_TEXT_BYTES = 4096


def _queue_name(name: Any) -> str:
    if not isinstance(name, str) or not models.QUEUE_PATTERN.match(name):
        raise UsageError(f"queue name {models.shown(name)} is not valid")
    return name


def _text(value: Any, name: str, line: bool = True, limit: int = models.MAX_ARG_BYTES) -> str:
    """A text argument of a public method (an id, a filter, a name), checked before it reaches a store:
    a string without NUL or lone surrogate (and, for ``line``, on one line)."""
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {type(value).__name__}")
    try:
        return models.one_line(value, name, 65536) if line else models.plain_text(value, name, limit)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _label_name(key: Any) -> str:
    """A label name to filter on: one a job could have (``list --label =x`` is a mistake, not "no jobs")."""
    try:
        return models.check_label_name(key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_no_cycle(jobs: list[Job]) -> None:
    """Jobs of one batch may depend on each other (stored jobs cannot depend on new ones): refuse loops."""
    batch = {job.id: job.after for job in jobs if job.after}
    state: dict[str, int] = {}

    def visit(job_id: str, path: list) -> None:
        if state.get(job_id) == 2 or job_id not in batch:
            return
        if state.get(job_id) == 1:
            raise UsageError(f"dependency cycle: {' -> '.join(path + [job_id])}")
        state[job_id] = 1
        for dep in batch[job_id]:
            visit(dep, path + [job_id])
        state[job_id] = 2

    for job_id in batch:
        visit(job_id, [])


def models_default_dir() -> str:
    from .config import data_folder

    folder = data_folder()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise QueueError(f"cannot create the default store's folder {folder}: {exc.strerror or exc} "
                         f"(set --db, or XDG_DATA_HOME)") from None
    return folder


def open_queue(**kwargs) -> Queue:
    return Queue.open(**kwargs)


def get_job_logs(job_id: str, attempt: Optional[int] = None, **open_kwargs) -> list[dict]:
    """The attempts of a job as dicts: job_id, attempt, exit_code, stdout, stderr, duration, created_at."""
    with Queue.open(**open_kwargs) as queue:
        return queue.logs(job_id, attempt)
