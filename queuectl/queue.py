"""The Queue: the one facade that the CLI, the Python API, workers and plugins use."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from . import models
from .config import Config, Setting
from .errors import JobValidationError, NotFound, PluginError, QueueError, UsageError
from .models import Attempt, Job
from .plugins import call_registrations, get_plugin_manager


def new_job_id() -> str:
    return os.urandom(8).hex()        # 64 random bits, like the uuid4 prefix it replaces, at a quarter of the cost


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
        self._collect_registrations()
        config.check_file()
        config.store_loader = self._stored_settings

    def _stored_settings(self) -> Optional[dict]:
        if self._opening:
            return None               # settings read while the store opens come from elsewhere
        return self.store.get_settings()

    @classmethod
    def open(cls, config: Optional[str] = None, db: Optional[str] = None, plugins_dir: Optional[str] = None,
             flags: Optional[dict] = None, plugins: Iterable[tuple[str, Any]] = (), env=None) -> "Queue":
        """Open the queue the way the CLI does: config file, environment, flags, plugins."""
        flags = dict(flags or {})
        flags.update({"db": db, "plugins-dir": plugins_dir})
        cfg = Config.load(config, flags, env)
        plugins_folder = cfg.get("plugins-dir")
        if plugins_folder is None and cfg.path is not None and (cfg.base_dir / "plugins").is_dir():
            plugins_folder = str(cfg.base_dir / "plugins")
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
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            except Exception as exc:
                print(f"queuectl: plugin {impl.plugin_name} failed in {hook}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)

    # --- the store ---------------------------------------------------------------------

    @property
    def db(self) -> str:
        db = self.config.get("db")
        if db:
            return db
        folder = models_default_dir()
        return str(folder / "queue.db")

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

    def build_job(self, spec: Any, source: Optional[str] = None, defaults: Optional[dict] = None) -> Job:
        """Validate a job spec through the ingestion hooks and fill in defaults.

        ``defaults`` (from :meth:`job_defaults`) lets a batch look its defaults up once.
        """
        if not isinstance(spec, dict):
            raise JobValidationError("a job must be a mapping of fields (a JSON object)")
        defaults = defaults or self.job_defaults()
        fields = dict(spec)
        self.pm.hook.queuectl_validate_job(job=fields, queue=self)
        now = models.now()
        core = {k: fields.pop(k) for k in models.INPUT_FIELDS if k in fields}
        max_retries = core.get("max_retries")
        run_at = core.get("run_at") or now + (core.get("delay") or 0.0)
        return Job(
            id=core.get("id") or new_job_id(), command=core["command"], state=models.PENDING,
            max_retries=defaults["max_retries"] if max_retries is None else max_retries,
            created_at=now, updated_at=now, run_at=run_at,
            priority=core.get("priority") or 0, queue=core.get("queue") or "default",
            executor=core.get("executor") or "shell", cwd=core.get("cwd") or defaults["cwd"],
            env=core.get("env") or {}, timeout=core.get("timeout"), source=source, fields=fields,
            unique_key=core.get("unique_key"), after=core.get("after") or [],
        )

    def job_defaults(self) -> dict:
        """What a job gets when it does not say: the current folder and the max-retries setting."""
        return {"cwd": os.getcwd(), "max_retries": self.config.get("max-retries")}

    def enqueue(self, spec: Optional[dict] = None, source: Optional[str] = "python", **fields) -> str:
        """Enqueue one job; returns its id."""
        return self.enqueue_many([dict(spec or {}, **fields)], source=source)[0]

    def enqueue_many(self, specs: Iterable[dict], source: Optional[str] = "python",
                     receipt: Optional[dict] = None) -> list[str]:
        """Enqueue a batch atomically: every job is validated first, then all are stored or none.

        ``receipt`` is recorded with the jobs in the same transaction (see Store.add_jobs).
        """
        defaults = self.job_defaults()
        jobs = [self.build_job(spec, source, defaults) for spec in specs]
        check_no_cycle(jobs)
        if not jobs:
            return []
        ids = self.store.add_jobs(jobs, receipt=receipt)
        self.store.notify()
        return ids

    def get(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        return job

    def list(self, state: Optional[str] = None, limit: Optional[int] = None, offset: int = 0) -> list[Job]:
        if state is not None and state not in models.STATES:
            raise UsageError(f"unknown state {state!r} (one of: {', '.join(models.STATES)})")
        return self.store.list_jobs(state, limit, offset)

    def attempts(self, job_id: str, attempt: Optional[int] = None) -> list[Attempt]:
        self.get(job_id)
        found = self.store.attempts(job_id, attempt)
        if attempt is not None and not found:
            raise NotFound(f"job {job_id!r} has no attempt {attempt}")
        return found

    def logs(self, job_id: str, attempt: Optional[int] = None) -> list[dict]:
        return [a.to_dict() for a in self.attempts(job_id, attempt)]

    def retry(self, job_id: str, states: tuple = (models.DEAD,)) -> Job:
        """Dead (or another finished state) -> pending with a fresh retry budget; the history stays."""
        self.get(job_id)
        job = self.store.retry_job(job_id, states)
        self.store.notify()
        return job

    def cancel(self, job_id: str) -> str:
        """A pending job never runs; a running job's processes are stopped by its worker."""
        return self.store.cancel_job(job_id)

    def set_queue(self, name: str, concurrency=..., paused: Optional[bool] = None) -> dict:
        if not models.QUEUE_PATTERN.match(name):
            raise UsageError(f"queue name {name!r} is not valid")
        row = self.store.set_queue(name, concurrency=concurrency, paused=paused)
        self.store.notify()
        return row

    def queues(self) -> list[dict]:
        return self.store.queues()

    def purge(self, states: Iterable[str], older_than: float) -> int:
        states = tuple(states)
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

    def request_stop(self) -> int:
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
        return self._reader("page_jobs")(state=state, queue=queue, text=text, before=before, limit=limit)

    def status(self) -> dict:
        return {
            "config_file": str(self.config.path) if self.config.path else None,
            "store": self.store.describe(),
            "counts": self.counts(),
            "workers": self.workers(),
            "plugins": self.plugin_status(),
        }

    def plugin_status(self) -> dict:
        sections = {}
        for result in self.pm.hook.queuectl_status_info(queue=self):
            sections.update(result or {})
        return sections

    # --- settings --------------------------------------------------------------------------

    def config_set(self, key: str, value: Any) -> Any:
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


def models_default_dir() -> Path:
    from .config import default_data_dir

    folder = default_data_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def open_queue(**kwargs) -> Queue:
    return Queue.open(**kwargs)


def get_job_logs(job_id: str, attempt: Optional[int] = None, **open_kwargs) -> list[dict]:
    """The attempts of a job as dicts: job_id, attempt, exit_code, stdout, stderr, duration, created_at."""
    with Queue.open(**open_kwargs) as queue:
        return queue.logs(job_id, attempt)
