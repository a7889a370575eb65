"""Settings: where each value comes from, in one place.

Precedence, highest first: command-line flag, environment (``QUEUECTL_<KEY>``), the
store (``queuectl config set``), config.yaml, the built-in default. Plugins declare
their own keys through ``queuectl_register_settings``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import QueueError, UsageError
from .models import MAX_INTERVAL, MAX_WAIT, record

if TYPE_CHECKING:
    from pathlib import Path   # built on request only: pathlib costs a tenth of a short command's start

SOURCES = ("flag", "env", "store", "file", "default")


def normalise_key(key: str) -> str:
    return str(key).strip().lower().replace("_", "-")


def between(low: float, high: float, integer: bool = False, low_open: bool = False):
    """A parser for a number in [low, high] (finite; an integer if ``integer``)."""
    from .models import Range

    return Range(low, high, integer, low_open).check


def seconds(low: float = 0.0, high: Optional[float] = None):
    """A parser for a span of time: 90, "90", "30s", "10m", "1h30m", within [low, high] seconds."""
    from .models import MAX_SECONDS, Range, parse_duration

    limit = Range(low, MAX_SECONDS if high is None else high)

    def parse(value: Any) -> float:
        if isinstance(value, str):
            value = parse_duration(value, limit.high)
        return limit.check(value)
    return parse


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None):
    from .models import INT64_MAX

    return between(-INT64_MAX if minimum is None else minimum, INT64_MAX if maximum is None else maximum, True)


def number(minimum: Optional[float] = None, allow_zero: bool = True, maximum: float = 1e6):
    """A finite number in [minimum, maximum] (plugins' settings; the core's use :func:`seconds`). The
    default bound keeps a value used as a timeout below what select/epoll take (about 24 days)."""
    return between(-maximum if minimum is None else minimum, maximum, low_open=not allow_zero and minimum == 0)


def text(value: Any) -> str:
    """A string every store can hold and a process can be given (no NUL, no lone surrogate)."""
    from .models import plain_text

    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {value!r}")
    return plain_text(str(value), "the value")


def location(value: Any) -> str:
    """A path or URL setting (the store, a folder): an empty one is refused, not read as the default, which
    `QUEUECTL_DB="$DB"` with DB unset would turn into another store than the config names."""
    value = text(value)
    if not value.strip():
        raise ValueError("an empty location (leave it out for the default)")
    return value


def line(value: Any) -> str:
    """A short single-line string (a host name, shown in tables and log lines)."""
    from .models import one_line

    return one_line(text(value), "the value", 256)


def choice(*options: str):
    def parse(value: Any) -> str:
        value = text(value).lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value
    return parse


def string_list(value: Any) -> list:
    if isinstance(value, str):
        return [line(v.strip()) for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [line(v) for v in value]
    raise ValueError(f"expected a list of names, got {value!r}")


def choice_list(noun: str, *options: str):
    """A parser of a list of names (as ``string_list``), each one of ``options``."""
    def parse(value: Any) -> list:
        names = string_list(value)
        unknown = [n for n in names if n not in options]
        if unknown:
            raise ValueError(f"unknown {noun} {unknown[0]!r} ({noun}s: {', '.join(options)})")
        return names
    return parse


#: Built-in plugins that cannot be blocked: without the validator every check of a job's fields is gone
#: (a third-party validator adds its own checks through queuectl_validate_job instead).
UNBLOCKABLE = ("validate",)


def plugin_names(value: Any) -> list:
    names = string_list(value)
    for name in names:
        if name in UNBLOCKABLE:
            raise ValueError(f"the built-in {name!r} plugin cannot be disabled (it checks every job; "
                             f"add checks with a queuectl_validate_job hook of your own)")
    return names


HIDDEN = "(hidden)"     # how config list and config set show a secret setting


@record
class Setting:
    """One configuration key.

    ``file_only`` keys (where the store is, which plugins load) cannot live in the store.
    ``path`` values in config.yaml are relative to the file. A ``secret`` value (a signing key) is
    shown as ``(hidden)`` by ``config list`` and ``config set``; ``config get KEY`` prints it.
    """

    name: str
    default: Any
    parse: Callable[[Any], Any] = text
    help: str = ""
    file_only: bool = False
    path: bool = False
    plugin: str = "core"
    secret: bool = False

    def __init__(self, name: str, default: Any, parse: Callable[[Any], Any] = text, help: str = "",
                 file_only: bool = False, path: bool = False, plugin: str = "core", secret: bool = False) -> None:
        self.name = name
        self.default = default
        self.parse = parse
        self.help = help
        self.file_only = file_only
        self.path = path
        self.plugin = plugin
        self.secret = secret

    @property
    def env_var(self) -> str:
        return "QUEUECTL_" + self.name.upper().replace("-", "_")


CORE_SETTINGS = (
    Setting("db", None, location, "Store location: a SQLite file path or a postgresql:// URL.", file_only=True, path=True),
    Setting("storage", "sqlite", text, "Storage backend used for a plain path.", file_only=True),
    Setting("plugins-dir", None, location, "Folder whose *.py files are loaded as plugins.", file_only=True, path=True),
    Setting("disable-plugins", [], plugin_names, "Plugins to block by name (built-ins included).", file_only=True),
    Setting("host-id", None, line, "Host name recorded in leases (default: this machine's hostname).", file_only=True),
    Setting("max-retries", 3, between(0, 1000, integer=True),
            "Retries after the first attempt; copied into each job at enqueue."),
    Setting("poll-interval", 1.0, seconds(0.001, MAX_INTERVAL),
            "Fallback poll of an idle worker, in seconds (it is woken on enqueue)."),
    Setting("lease-timeout", 30.0, seconds(0.1, MAX_WAIT), "Seconds a claim stays valid without a heartbeat."),
    Setting("heartbeat-interval", 0.0, seconds(0.0, MAX_INTERVAL),
            "Seconds between lease renewals (0: a third of lease-timeout)."),
    Setting("recovery-interval", 1.0, seconds(0.01, MAX_INTERVAL),
            "Seconds between a pool's checks for lost workers and stop requests."),
    Setting("timeout", 0.0, seconds(0.0), "Default job timeout in seconds (0: none)."),
    Setting("kill-grace", 5.0, seconds(0.0, MAX_WAIT), "Seconds between SIGTERM and SIGKILL when a job is stopped."),
    Setting("worker-priority", "realtime", choice("realtime", "normal"),
            "realtime: where allowed (root, RLIMIT_RTPRIO) a worker runs at SCHED_RR 1 while its command runs, "
            "so a killed worker dies at once on a busy machine and its watchdog stops the command before it "
            "can finish; commands always start at the normal policy. normal: workers run like any process."),
    Setting("lock-timeout", 60.0, seconds(0.0, MAX_WAIT), "Seconds a command waits out a locked store before failing "
            "(workers wait forever).", file_only=True),
)


def posix_path(path: str) -> str:
    """``str(pathlib.PurePosixPath(path))`` without importing pathlib (a tenth of a short command's
    start): repeated slashes and "." parts dropped, ".." kept, a leading "//" kept, "" read as "."."""
    root = "//" if path.startswith("//") and not path.startswith("///") else "/" if path.startswith("/") else ""
    return root + "/".join(part for part in path.split("/") if part and part != ".") or "."


def data_folder() -> str:
    """queuectl's folder under the user's data home (the default store, outboxes)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "queuectl")


def find_config_file(explicit: Optional[str] = None, env=os.environ, skip_local: bool = False) -> Optional[str]:
    """--config / QUEUECTL_CONFIG, else ./config.yaml (resolved), else the user's config file."""
    for chosen, where in ((explicit, "--config"), (env.get("QUEUECTL_CONFIG"), "environment QUEUECTL_CONFIG")):
        if chosen is not None:
            chosen = os.fspath(chosen)
            if not chosen.strip():         # `QUEUECTL_CONFIG="$CFG"` with CFG unset: not another config file
                raise UsageError(f"{where}: an empty path (leave it out to look for config.yaml)")
            return chosen
    if not skip_local and os.path.isfile("config.yaml"):
        return os.path.realpath("config.yaml")
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = os.path.join(xdg, "queuectl", "config.yaml")
    return user if os.path.isfile(user) else None


def read_config_file(path) -> dict:
    """The settings in a config file; the parse is cached by the file's exact stat (see _cache)."""
    if path is None:
        return {}
    from . import _cache

    name = os.path.abspath(path)
    before = _cache.fingerprint(name)
    if before is not None:
        cached = _cache.load("config", name, before)
        if isinstance(cached, dict):
            return cached
    data = _parse_config_file(path)
    after = _cache.fingerprint(name)
    if after is not None and after == before and _cache.settled([after]) and _cache.plain_json(data):
        _cache.store("config", name, after, data)
    return data


MAX_CONFIG_BYTES = 1 << 20       # far more than any settings file; /dev/zero named as one never ends


def _parse_config_file(path) -> dict:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise UsageError(f"config file {path} is larger than 1 MiB: not a settings file")
        raw = raw.decode("utf-8")
    except OSError as exc:
        raise QueueError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path} is not UTF-8 text (byte {exc.start + 1})") from None
    import yaml  # only when there is a file to parse

    try:
        data = yaml.load(raw, Loader=_bounded_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise UsageError(f"config file {path}{where} is not valid YAML: {getattr(exc, 'problem', None) or exc}") \
            from None
    except RecursionError:
        raise UsageError(f"config file {path} is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of settings")
    return {normalise_key(k): v for k, v in data.items()}


MAX_CONFIG_NODES = 10000        # far more than any settings file; a YAML alias bomb expands to billions


def refuse_duplicate_keys(node) -> None:
    """A key given twice in one YAML mapping is refused (YAML requires keys to be unique; PyYAML would
    keep the last and drop the other without a word). Merge keys (``<<``) are not keys."""
    import yaml

    seen = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                     f"found the key {key_node.value!r} twice", key_node.start_mark)
        seen.add(key)


class UniqueKeys:
    """A YAML loader mixin (before the loader class in the bases): a key given twice in a mapping is
    refused (``refuse_duplicate_keys``). Used by the config file's loader and the spool's."""

    def construct_mapping(self, node, deep=False):
        refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep)


def _bounded_loader():
    import yaml

    class BoundedLoader(UniqueKeys, yaml.SafeLoader):
        """Counts the values built, each alias counted with everything it repeats; refuses a key twice."""

        def __init__(self, stream):
            super().__init__(stream)
            self.sizes: dict = {}
            self.total = 0

        def construct_document(self, node):
            self._measure(node, set())
            return super().construct_document(node)

        def _measure(self, node, seen) -> int:
            key = id(node)
            if key in self.sizes:
                size = self.sizes[key]
            else:
                if key in seen:
                    raise yaml.YAMLError("a YAML alias refers to itself")
                seen.add(key)
                children = node.value if isinstance(node.value, list) else []
                size = 1
                for child in children:
                    for part in (child if isinstance(child, tuple) else (child,)):
                        size += self._measure(part, seen)
                        if size > MAX_CONFIG_NODES:
                            break
                    if size > MAX_CONFIG_NODES:
                        break
                self.sizes[key] = size
            if size > MAX_CONFIG_NODES:
                raise yaml.YAMLError(f"it expands to more than {MAX_CONFIG_NODES} values (a YAML alias bomb?)")
            return size
    return BoundedLoader


class Config:
    """Resolved settings for one process."""

    def __init__(self, path=None, file_data: Optional[dict] = None,
                 flags: Optional[dict] = None, env=None):
        self.path = path
        self.file_data = dict(file_data or {})
        self.flags = {normalise_key(k): v for k, v in (flags or {}).items() if v is not None}
        self.env = os.environ if env is None else env
        self.settings: dict[str, Setting] = {}
        self.store_loader: Optional[Callable[[], dict]] = None
        self._store_values: Optional[dict] = None
        self._values: dict = {}               # get() results while the stored values are cached
        self.implicit_local = False           # found as ./config.yaml, not named by --config or $QUEUECTL_CONFIG
        self.ignored_path: Optional[str] = None    # a ./config.yaml passed over as another tool's
        self.unreadable: Optional[UsageError] = None   # why an implicit ./config.yaml could not be read as settings
        for setting in CORE_SETTINGS:
            self.register(setting)

    @classmethod
    def load(cls, config_path: Optional[str] = None, flags: Optional[dict] = None, env=None,
             skip_local: bool = False) -> "Config":
        env = os.environ if env is None else env
        path = find_config_file(config_path, env, skip_local)
        implicit = bool(path) and not (config_path or env.get("QUEUECTL_CONFIG")) and path == os.path.realpath("config.yaml")
        try:
            data, unreadable = read_config_file(path), None
        except UsageError as exc:       # not YAML, not a mapping, not UTF-8: whose it is is decided by its keys
            if not implicit:
                raise
            data, unreadable = {}, exc
        cfg = cls(path, data, flags, env)
        cfg.implicit_local, cfg.unreadable = implicit, unreadable
        return cfg

    def written_keys(self) -> set:
        """The setting names the file holds; for a file that could not be read as settings, the names
        that open one of its lines as a YAML key would (``db:``, ``max-retries:``)."""
        if self.unreadable is None:
            return set(self.file_data)
        import re

        text = ""
        if self.file:
            with open(self.file, "rb") as fh:
                text = fh.read(MAX_CONFIG_BYTES).decode("utf-8", "replace")
        return {normalise_key(k) for k in re.findall(r"^[ \t]*-?[ \t]*[\"']?([A-Za-z][\w-]*)[\"']?[ \t]*:", text, re.M)}

    def maybe_foreign(self) -> bool:
        """An implicit ./config.yaml with keys, none of them a core setting: perhaps another tool's. One
        that could not be read is another tool's unless a line names a core setting (then its error stands)."""
        if not self.implicit_local:
            return False
        if self.unreadable is not None:
            if self.written_keys() & set(self.settings):
                raise self.unreadable
            return True
        return bool(self.file_data) and not set(self.file_data) & set(self.settings)

    # The config file in use: ``file`` as a str (what queuectl itself uses), ``path`` as a pathlib.Path
    # for callers who want one; None when there is none. Likewise ``base_folder`` and ``base_dir``.
    @property
    def path(self) -> Optional[Path]:
        if self.file is None:
            return None
        from pathlib import Path

        return Path(self.file)

    @path.setter
    def path(self, value) -> None:
        self.file: Optional[str] = None if value is None else os.fspath(value)

    @property
    def base_folder(self) -> str:
        """The config file's folder (relative paths in it are read from there), else the current folder."""
        return os.path.dirname(os.path.realpath(self.file)) if self.file else os.getcwd()

    @property
    def base_dir(self) -> Path:
        from pathlib import Path

        return Path(self.base_folder)

    def register(self, setting: Setting) -> None:
        name = normalise_key(setting.name)
        if name in self.settings:
            raise QueueError(f"setting {name!r} is declared twice ({self.settings[name].plugin} and {setting.plugin})")
        if type(setting) is Setting:     # what dataclasses.replace(setting, name=name) makes
            self.settings[name] = Setting(name, setting.default, setting.parse, setting.help, setting.file_only,
                                          setting.path, setting.plugin, setting.secret)
        else:
            import dataclasses

            self.settings[name] = dataclasses.replace(setting, name=name)

    def setting(self, key: str) -> Setting:
        name = normalise_key(key)
        if name not in self.settings:
            raise UsageError(f"unknown config key {key!r} (see 'queuectl config list')")
        return self.settings[name]

    def check_file(self) -> None:
        """Refuse unknown keys and bad values in config.yaml, naming the file."""
        for key, value in self.file_data.items():
            if key not in self.settings:
                raise UsageError(f"config file {self.file}: unknown key {key!r}")
            self._parse(self.settings[key], value, f"config file {self.file}")

    def check_env(self) -> None:
        """Refuse a bad QUEUECTL_<KEY> value, naming the variable."""
        for setting in self.settings.values():
            if setting.env_var in self.env:
                self._parse(setting, self.env[setting.env_var], f"environment {setting.env_var}")

    def _parse(self, setting: Setting, value: Any, where: str) -> Any:
        try:
            return setting.parse(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise UsageError(f"{where}: {setting.name}: {exc}") from None

    def parse(self, key: str, value: Any) -> Any:
        setting = self.setting(key)
        return self._parse(setting, value, "invalid value")

    def _raw(self, name: str) -> tuple[Any, str]:
        setting = self.settings[name]
        if name in self.flags:
            return self.flags[name], "flag"
        if setting.env_var in self.env:
            return self.env[setting.env_var], "env"
        if not setting.file_only:
            stored = self.store_values()
            if name in stored:
                return stored[name], "store"
        if name in self.file_data:
            return self.file_data[name], "file"
        return setting.default, "default"

    def lookup(self, key: str) -> tuple[Any, str]:
        """The value of a key and where it came from."""
        setting = self.setting(key)
        value, source = self._raw(setting.name)
        if source == "store":
            try:
                value = setting.parse(value)
            except (ValueError, TypeError, OverflowError) as exc:
                return self._bad_stored(setting, value, exc), "default"
        elif source != "default":
            value = self._parse(setting, value, f"{source} value")
            if setting.path and source == "file" and value and "://" not in value:
                # abspath, not resolve(): a symlink at the path stays one, so O_NOFOLLOW can refuse it
                value = os.path.abspath(os.path.join(self.base_folder, os.path.expanduser(value)))
            elif setting.path and value and "://" not in value:
                value = os.path.abspath(os.path.expanduser(value))
        return value, source

    def _bad_stored(self, setting: Setting, value: Any, exc: Exception) -> Any:
        """A stored value that `config set` would refuse (written by another tool or an older queuectl):
        one line per process and value, then the default, so no pool or command stops over it."""
        warned = self.__dict__.setdefault("_warned", set())
        if (setting.name, repr(value)) not in warned:
            warned.add((setting.name, repr(value)))
            import sys

            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            print(f"queuectl: stored setting {setting.name} = {shown} is invalid ({exc}); "
                  f"using the default {setting.default!r}", file=sys.stderr)
        return setting.default

    def get(self, key: str) -> Any:
        # A worker asks for a few settings per job: parsing each again costs a tenth of its time, so
        # a value is kept until refresh() forgets the stored values it may come from (or they were
        # never read: the store is not open yet, nothing is kept).
        try:
            return self._values[key]
        except KeyError:
            value = self.lookup(key)[0]
            if self._store_values is not None:
                self._values[key] = value
            return value

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def store_values(self) -> dict:
        if self._store_values is None:
            values = self.store_loader() if self.store_loader else None
            if values is None:
                return {}             # the store is not open (yet): do not cache
            self._store_values = values
        return self._store_values

    def copy(self) -> "Config":
        """The same settings with their own cache of stored values."""
        import copy          # here: a command seldom needs it, and its import looks for Jython's modules

        twin = copy.copy(self)
        twin._store_values = None
        twin._values = {}
        return twin

    def refresh(self) -> None:
        """Forget cached store values, so a running worker sees `config set` changes."""
        self._store_values = None
        self._values = {}

    def items(self) -> list[dict]:
        rows = []
        for name in sorted(self.settings):
            value, source = self.lookup(name)
            setting = self.settings[name]
            if setting.secret and value is not None:
                value = HIDDEN
            rows.append({"key": name, "value": value, "source": source, "plugin": setting.plugin,
                         "file_only": setting.file_only, "help": setting.help})
        return rows

    @property
    def heartbeat_interval(self) -> float:
        return self.get("heartbeat-interval") or self.get("lease-timeout") / 3.0
