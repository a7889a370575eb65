"""The plugin manager: built-ins, then entry points, then the local plugins folder.

Built-ins are ordinary plugin modules registered through the same manager; any of them
can be blocked by name (``disable-plugins``) and replaced by a third-party plugin.
"""
from __future__ import annotations

import importlib
import os
import stat
import sys
from types import FunctionType, MethodType, ModuleType
from typing import Any, Callable, Iterable, Iterator, Optional

import pluggy

from . import hookspecs
from .errors import PluginError, QueueError

#: Built-in plugin modules, registered under these names (block one to replace it).
BUILTINS = (
    ("validate", "queuectl.builtin.validate"),
    ("sqlite", "queuectl.builtin.sqlite_store"),
    ("postgres", "queuectl.builtin.postgres_store"),
    ("shell", "queuectl.builtin.shell"),
    ("backoff", "queuectl.builtin.backoff"),
    ("dlq", "queuectl.builtin.dlq"),
    ("spool", "queuectl.builtin.spool"),
    ("schedule", "queuectl.builtin.schedule"),
    ("dashboard", "queuectl.builtin.dashboard"),
    ("notify", "queuectl.builtin.notify"),
    ("watch", "queuectl.builtin.watch"),
)
ENTRY_POINT_GROUP = "queuectl"


def check_trusted(path: str) -> None:
    """Refuse code that another user owns or can write: loading it would run their code as us."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise PluginError(f"cannot read plugins path {path}: {exc.strerror}") from None
    trusted(path, info)


def trusted(path: str, info: os.stat_result) -> None:
    if info.st_uid not in (os.geteuid(), 0):
        raise PluginError(f"refusing plugins path {path}: it is owned by another user (uid {info.st_uid})")
    if info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and not private_group(info.st_gid)):
        raise PluginError(f"refusing plugins path {path}: other users can write it (run: chmod go-w {path})")


def read_trusted(path: str) -> bytes:
    """The source of a plugin file, read through the same descriptor whose owner and mode were checked
    (no window for a swap between check and read; a symlink is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise PluginError(f"cannot read plugin {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PluginError(f"refusing plugin {path}: it is not a regular file")
        trusted(path, info)
        return fh.read()


def private_group(gid: int) -> bool:
    """True when no user but us is in group ``gid`` (a user-private group, as umask 002 systems use)."""
    import grp
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    try:
        members = set(grp.getgrgid(gid).gr_mem) - {me}
    except KeyError:
        return False
    others = [u.pw_name for u in pwd.getpwall() if u.pw_gid == gid and u.pw_name != me]
    return gid == os.getegid() and not members and not others


def load_plugins_dir(pm: pluggy.PluginManager, folder) -> list[str]:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise PluginError(f"plugins folder {folder} does not exist")
    check_trusted(folder)
    names = []
    # The names glob("*.py") gives, in the same order (and none in a folder we may not list, as
    # glob has it), without compiling a pattern for them.
    try:
        listing = sorted(os.listdir(folder))
    except PermissionError:
        listing = []
    for file_name in [n for n in listing if n.endswith(".py")]:
        path, name = os.path.join(folder, file_name), os.path.splitext(file_name)[0]   # (Path.stem)
        if pm.is_blocked(name):
            continue
        source = read_trusted(path)
        module_name = f"queuectl_local_plugins.{name}"
        module = ModuleType(module_name)
        module.__file__ = path
        try:
            sys.modules[module_name] = module
            # Compiled from the source we just checked, never from __pycache__ (which someone else
            # might write) and without writing bytecode there (umask 000 would make it 0777).
            exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
        except Exception as exc:  # a broken plugin is the user's to fix: say which and why
            sys.modules.pop(module_name, None)
            raise PluginError(f"plugin {path} failed to load: {type(exc).__name__}: {exc}{without(name)}") from None
        _register(pm, module, name, origin=str(path))
        names.append(name)
    return names


def _register(pm: pluggy.PluginManager, plugin: Any, name: str, origin: str) -> None:
    if pm.get_plugin(name) is not None:
        raise PluginError(f"two plugins are named {name!r} ({origin} and {pm_origin(pm, name)}); "
                          f"block one with disable-plugins")
    pm.register(plugin, name=name)
    if isinstance(pm, PluginManager):
        wrappers = sorted(pm.wrappers_found)
    else:
        wrappers = sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                          for impl in caller.get_hookimpls()
                          if impl.plugin is plugin and (impl.hookwrapper or getattr(impl, "wrapper", False)))
    if wrappers:
        # The core calls each implementation itself (call_each), so a wrapper would be called as a
        # plain function and silently do nothing: refused instead.
        pm.unregister(plugin)
        raise PluginError(f"plugin {name} ({origin}): {wrappers[0]} is a hook wrapper, which queuectl's hooks "
                          f"do not take; implement the hook itself" + without(name))
    pm.origins[name] = origin


def pm_origin(pm: pluggy.PluginManager, name: str) -> str:
    return getattr(pm, "origins", {}).get(name, "?")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with a quicker scan of module plugins; what it finds is the same.

    pluggy looks at every name in a plugin with ``inspect.getattr_static``, which is slow
    and is most of the cost of registering a module full of imports. For a plain module,
    a name that is not a dunder resolves to the module's own ``__dict__`` entry, and one
    that is not a function, staticmethod, classmethod or bound method can be no hook, so
    such names are skipped here, as are the dunders of a built-in's stand-in (which we
    made). A name that holds a function has its marker read straight from the function, as
    pluggy reads it; every other name goes through pluggy unchanged.
    """

    @staticmethod
    def _cannot_be_hook(obj: Any, name: str) -> bool:
        if type(obj) is not ModuleType:
            return False
        if name.startswith("__") and name.endswith("__"):
            # A built-in's stand-in (see _lazy.stand_in) holds its hooks and the dunders ModuleType gives it.
            return "__queuectl_loader__" in obj.__dict__
        try:
            value = obj.__dict__[name]
        except KeyError:
            return False
        return not isinstance(value, (FunctionType, staticmethod, classmethod, MethodType))

    @staticmethod
    def _module_function(obj: Any, name: str) -> Optional[FunctionType]:
        """The plain function a module's own name holds, which is what pluggy finds for it (with
        ``inspect.getattr_static``, at ten times the cost: a plugin module's hooks are functions)."""
        if type(obj) is not ModuleType or (name.startswith("__") and name.endswith("__")):
            return None
        value = obj.__dict__.get(name)
        return value if type(value) is FunctionType else None

    def __init__(self, project_name: str):
        super().__init__(project_name)
        #: The hooks of the plugin registered last that are hook wrappers (see _register): noted while
        #: pluggy reads each hook's options, instead of looking through every hook caller afterwards.
        self.wrappers_found: list[str] = []

    def register(self, plugin, name=None):
        self.wrappers_found = []
        return super().register(plugin, name)

    def parse_hookimpl_opts(self, plugin, name):
        opts = self._hookimpl_opts(plugin, name)
        if opts is not None and (opts.get("hookwrapper") or opts.get("wrapper")):
            self.wrappers_found.append(opts.get("specname") or name)
        return opts

    def _hookimpl_opts(self, plugin, name):
        if self._cannot_be_hook(plugin, name):
            return None
        function = self._module_function(plugin, name)
        if function is not None:
            return _marker_opts(function, self.project_name + "_impl")
        return super().parse_hookimpl_opts(plugin, name)

    def parse_hookspec_opts(self, module_or_class, name):
        if self._cannot_be_hook(module_or_class, name):
            return None
        function = self._module_function(module_or_class, name)
        if function is not None:
            return _marker_opts(function, self.project_name + "_spec")
        return super().parse_hookspec_opts(module_or_class, name)


def _marker_opts(function: FunctionType, attribute: str) -> Optional[dict]:
    """The options a hookimpl or hookspec marker put on a function, as pluggy reads them."""
    for holder in (function, getattr(function, "__func__", None)):
        opts = getattr(holder, attribute, None)
        if opts is not None:
            return opts if isinstance(opts, dict) else None
    return None


def get_plugin_manager(plugins_dir: Optional[str] = None, blocked: Iterable[str] = (),
                       entry_points: bool = True, extra: Iterable[tuple[str, Any]] = ()) -> pluggy.PluginManager:
    """A fresh manager: one per Queue, never a module global, so tests stay independent."""
    pm = PluginManager(hookspecs.PROJECT)
    pm.origins = {}
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    from ._lazy import builtin_plugins

    for name, plugin in builtin_plugins(BUILTINS, blocked=pm.is_blocked):
        _register(pm, plugin, name, origin="builtin")
    for name, plugin in extra:
        if not pm.is_blocked(name):
            _register(pm, plugin, name, origin="python")
    if entry_points and os.environ.get("QUEUECTL_NO_ENTRY_POINTS") != "1":
        _load_entry_points(pm)
    if plugins_dir:
        load_plugins_dir(pm, plugins_dir)
    if os.environ.get("QUEUECTL_TRACE_HOOKS") == "1":
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    pm.check_pending()
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load and register every plugin of the ``queuectl`` entry-point group.

    Which entry points exist is cached (see :func:`entry_point_specs`); each plugin is
    still imported and registered on every run.
    """
    for name, value, load in entry_point_specs():
        if pm.is_blocked(name):
            continue
        try:
            plugin = load()
        except Exception as exc:
            raise PluginError(f"plugin {name} ({value}) failed to load: {type(exc).__name__}: {exc}{without(name)}") from None
        _register(pm, plugin, name, origin=f"entry point {value}")


def entry_point_specs() -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, value, load) for each entry point of the group, in importlib.metadata's order.

    Scanning every installed distribution (and importing importlib.metadata) is the slow
    part of start-up, so the scan's result is cached under a fingerprint of everything it
    read: each sys.path entry, and the entry_points.txt of each distribution found there.
    Installing, removing or editing a distribution changes the fingerprint.
    """
    from . import _cache

    key = _entry_points_fingerprint() if _cache.enabled() else None
    cache_name = repr((sys.executable, sys.version, sys.path))
    if key is not None:
        cached = _cache.load("entry-points", cache_name, key)
        if isinstance(cached, list) and all(isinstance(e, list) and len(e) == 2 and all(isinstance(v, str) for v in e)
                                             for e in cached):
            return [(name, value, _loader(value)) for name, value in cached]
    from importlib.metadata import entry_points

    found = list(entry_points(group=ENTRY_POINT_GROUP))
    if key is not None and _cache.settled(key[1]) and key == _entry_points_fingerprint():
        _cache.store("entry-points", cache_name, key, [[ep.name, ep.value] for ep in found])
    return [(ep.name, ep.value, ep.load) for ep in found]


def _entry_points_fingerprint() -> Optional[list]:
    """What importlib.metadata reads to find entry points, as stat fingerprints; None: do not cache."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:        # another finder may supply distributions we cannot fingerprint
        if finder is not PathFinder and getattr(finder, "find_distributions", None) is not None:
            return None
    from ._cache import fingerprint

    entries, prints = [], []
    for entry in sys.path:
        folder = entry or "."
        entries.append([entry, os.path.abspath(folder)])
        if not os.path.isdir(folder):        # a zip file, or missing
            prints.append(fingerprint(folder))
            continue
        # A folder's own mtime is left out: the listing below shows any distribution
        # added or removed, and a store kept in the same folder changes it on every run.
        prints.append(None)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return None
        # Each distribution by name and its entry_points.txt, the one file read for entry points.
        # A .dist-info or .egg-info is named after its folder (in the listing); an egg by its
        # EGG-INFO, so that folder is fingerprinted too.
        prefix = os.path.join(folder, "")        # what os.path.join(folder, ...) starts with
        for name in names:
            if name.endswith((".dist-info", ".egg-info", ".egg")):
                meta = os.path.join(name, "EGG-INFO") if name.endswith(".egg") else name
                entries.append([entry, meta])
                prints.append(fingerprint(f"{prefix}{meta}{os.sep}entry_points.txt"))
                if name.endswith(".egg"):
                    entries.append([entry, meta, "."])
                    prints.append(fingerprint(prefix + meta))
    return [entries, prints]


_EP_PATTERN = None


def _loader(value: str) -> Callable[[], Any]:
    """Load an entry point value ("module:attr.attr") the way importlib.metadata.EntryPoint.load does."""
    def load():
        global _EP_PATTERN
        if _EP_PATTERN is None:
            import re

            _EP_PATTERN = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
        match = _EP_PATTERN.match(value)
        if match is None:
            from importlib.metadata import EntryPoint

            return EntryPoint(name="", value=value, group=ENTRY_POINT_GROUP).load()
        obj = importlib.import_module(match.group("module"))
        for attr in filter(None, (match.group("attr") or "").split(".")):
            obj = getattr(obj, attr)
        return obj
    return load


def hook_failure(plugin: str, hook: str, exc: BaseException) -> str:
    """The one line that says which plugin failed in which hook, and how."""
    return f"plugin {plugin} failed in {hook}: {type(exc).__name__}: {exc}"


def without(plugin: str) -> str:
    """How to run without a broken plugin, appended to the error that names it."""
    return f" (to run without it: QUEUECTL_DISABLE_PLUGINS={plugin}, or disable-plugins: [{plugin}] in config.yaml)"


def plugin_warning(plugin: str, hook: str, exc: BaseException) -> None:
    """Log a plugin's failure in a report, which never fails a job (one line on stderr)."""
    print(f"queuectl: {hook_failure(plugin, hook, exc)}", file=sys.stderr, flush=True)


def call_each(pm: pluggy.PluginManager, hook_name: str, kwargs: Any,
              on_error: Optional[Callable[[str, Exception], None]] = None) -> Iterator[tuple[str, Any]]:
    """Call each implementation of a hook in pluggy's order, with the arguments it takes, and yield
    (plugin name, result): the one place where the core calls plugin code and meets its failures.
    ``kwargs`` is a dict, or a function of the plugin name that gives one.

    Without ``on_error``, a ``QueueError`` a plugin raises on purpose (a ``JobValidationError``, a
    ``UsageError``) passes through and any other exception becomes a ``PluginError``: one line naming
    the plugin and the hook. With ``on_error``, every exception goes to ``on_error(plugin, exc)`` and
    the next implementation is called (for reports, which must never fail a job)."""
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        args = kwargs(impl.plugin_name) if callable(kwargs) else kwargs
        try:
            result = impl.function(**{k: v for k, v in args.items() if k in impl.argnames})
        except Exception as exc:
            if on_error is None and isinstance(exc, QueueError):
                raise
            if on_error is None:
                raise PluginError(hook_failure(impl.plugin_name, hook_name, exc) + without(impl.plugin_name)) from None
            on_error(impl.plugin_name, exc)
            continue
        yield impl.plugin_name, result


class EachCall:
    """``for _ in call_each(pm, hook_name, kwargs): pass`` for a hook the core calls once per job of a
    batch (the validators): the same implementations in the same order, given the same arguments, and
    the same failures (a ``QueueError`` passes through, any other exception is a ``PluginError``
    naming the plugin), with less work per call. The hook's implementations are compared with the
    ones prepared at each call, so a plugin registered or unregistered in between is seen at once;
    for each implementation, which of ``names`` it takes is worked out once, and it is called with
    them positionally, as pluggy calls it (a generator, a kwargs dict and a comprehension per call
    and implementation were twice the built-in validator's own work in a bulk enqueue)."""

    __slots__ = ("pm", "hook_name", "names", "_impls", "_calls")

    def __init__(self, pm: pluggy.PluginManager, hook_name: str, names: tuple):
        self.pm, self.hook_name, self.names = pm, hook_name, tuple(names)
        self._impls: Optional[list] = None
        self._calls: list = []

    def _prepare(self, impls: list) -> None:
        everything = tuple(range(len(self.names)))
        calls = []
        for impl in reversed(impls):
            picks = tuple(self.names.index(name) for name in impl.argnames if name in self.names)
            calls.append((impl.plugin_name, impl.function, None if picks == everything else picks))
        self._impls, self._calls = impls, calls

    def __call__(self, *values) -> None:
        """Call each implementation with ``values``, the arguments named by ``names``, in that order."""
        impls = getattr(self.pm.hook, self.hook_name).get_hookimpls()
        if impls != self._impls:
            self._prepare(impls)
        for plugin, function, picks in self._calls:
            try:
                if picks is None:
                    function(*values)
                else:
                    function(*[values[i] for i in picks])
            except QueueError:
                raise
            except Exception as exc:
                raise PluginError(hook_failure(plugin, self.hook_name, exc) + without(plugin)) from None


def call_registrations(pm: pluggy.PluginManager, hook_name: str, make_register: Callable[[str], Callable],
                       on_error: Optional[Callable[[str, Exception], None]] = None) -> None:
    """Call a ``register``-style hook once per plugin, so each registration knows its plugin.

    A plugin that raises is named in one line (a ``PluginError``), or, with ``on_error``, passed to
    ``on_error(plugin, exc)`` while the other plugins still register."""
    for _ in call_each(pm, hook_name, lambda plugin: {"register": make_register(plugin)}, on_error):
        pass


def describe(pm: pluggy.PluginManager) -> list[dict]:
    """What `queuectl plugins` prints: each plugin, where it came from and the hooks it implements."""
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "origin": pm_origin(pm, name), "hooks": hooks})
    return out
