"""The plugin manager: built-ins, then entry points, then the local plugins folder.

Built-ins are ordinary plugin modules registered through the same manager; any of them
can be blocked by name (``disable-plugins``) and replaced by a third-party plugin.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pluggy

from . import hookspecs
from .errors import PluginError

#: Built-in plugin modules, registered under these names (block one to replace it).
BUILTINS = (
    ("validate", "queuectl.builtin.validate"),
    ("sqlite", "queuectl.builtin.sqlite_store"),
    ("shell", "queuectl.builtin.shell"),
    ("backoff", "queuectl.builtin.backoff"),
    ("dlq", "queuectl.builtin.dlq"),
    ("schedule", "queuectl.builtin.schedule"),
)
ENTRY_POINT_GROUP = "queuectl"


def check_trusted(path: Path) -> None:
    """Refuse code that another user owns or can write: loading it would run their code as us."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise PluginError(f"cannot read plugins path {path}: {exc.strerror}") from None
    if info.st_uid not in (os.geteuid(), 0):
        raise PluginError(f"refusing plugins path {path}: it is owned by another user (uid {info.st_uid})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PluginError(f"refusing plugins path {path}: other users can write it (run: chmod go-w {path})")


def load_plugins_dir(pm: pluggy.PluginManager, folder: Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise PluginError(f"plugins folder {folder} does not exist")
    check_trusted(folder)
    names = []
    for path in sorted(folder.glob("*.py")):
        name = path.stem
        if pm.is_blocked(name):
            continue
        check_trusted(path)
        module_name = f"queuectl_local_plugins.{name}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:  # a broken plugin is the user's to fix: say which and why
            sys.modules.pop(module_name, None)
            raise PluginError(f"plugin {path} failed to load: {type(exc).__name__}: {exc}") from None
        _register(pm, module, name, origin=str(path))
        names.append(name)
    return names


def _register(pm: pluggy.PluginManager, plugin: Any, name: str, origin: str) -> None:
    if pm.get_plugin(name) is not None:
        raise PluginError(f"two plugins are named {name!r} ({origin} and {pm_origin(pm, name)}); "
                          f"block one with disable-plugins")
    pm.register(plugin, name=name)
    pm.origins[name] = origin


def pm_origin(pm: pluggy.PluginManager, name: str) -> str:
    return getattr(pm, "origins", {}).get(name, "?")


def get_plugin_manager(plugins_dir: Optional[str] = None, blocked: Iterable[str] = (),
                       entry_points: bool = True, extra: Iterable[tuple[str, Any]] = ()) -> pluggy.PluginManager:
    """A fresh manager: one per Queue, never a module global, so tests stay independent."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.origins = {}
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    for name, module_name in BUILTINS:
        if not pm.is_blocked(name):
            _register(pm, importlib.import_module(module_name), name, origin="builtin")
    for name, plugin in extra:
        if not pm.is_blocked(name):
            _register(pm, plugin, name, origin="python")
    if entry_points and os.environ.get("QUEUECTL_NO_ENTRY_POINTS") != "1":
        _load_entry_points(pm)
    if plugins_dir:
        load_plugins_dir(pm, Path(plugins_dir))
    if os.environ.get("QUEUECTL_TRACE_HOOKS") == "1":
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    pm.check_pending()
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {ep.name} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from None
        _register(pm, plugin, ep.name, origin=f"entry point {ep.value}")


def call_registrations(pm: pluggy.PluginManager, hook_name: str, make_register: Callable[[str], Callable]) -> None:
    """Call a ``register``-style hook once per plugin, so each registration knows its plugin."""
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        impl.function(register=make_register(impl.plugin_name))


def describe(pm: pluggy.PluginManager) -> list[dict]:
    """What `queuectl plugins` prints: each plugin, where it came from and the hooks it implements."""
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "origin": pm_origin(pm, name), "hooks": hooks})
    return out
