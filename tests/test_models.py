"""The records of models.py, store.py and config.py write their methods out (see models.record):
each must behave as the @dataclass of the same fields would, so a field added without its
__init__ line, or a method that drifts from what @dataclass generates, fails here."""
from __future__ import annotations

import copy
import dataclasses
import inspect

import pytest

from queuectl.builtin.notify import Notifier
from queuectl.config import Setting
from queuectl.models import Attempt, ExecResult, Job, Lease, Range, RetryDecision
from queuectl.store import Transition, WorkerInfo

RECORDS = (Job, Lease, Attempt, ExecResult, RetryDecision, Range, WorkerInfo, Transition, Setting, Notifier)


def generated(cls):
    """The class @dataclass makes from ``cls``'s fields, with every method generated."""
    namespace = {"__annotations__": {f.name: f.type for f in dataclasses.fields(cls)}, "__module__": cls.__module__,
                 "__qualname__": cls.__qualname__}
    for f in dataclasses.fields(cls):
        namespace[f.name] = dataclasses.field(default=f.default, default_factory=f.default_factory)
    return dataclasses.dataclass(type(cls.__name__, (), namespace), frozen=cls is Range)


def sample(cls, seed: int) -> dict:
    """Values for every field, different per seed (a list for lists, a dict for dicts)."""
    values = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        kind = str(f.type)
        if kind == "dict":
            values[f.name] = {"k": seed + i}
        elif kind == "list":
            values[f.name] = [seed, i]
        elif kind == "bytes":
            values[f.name] = bytes([seed, i])
        else:
            values[f.name] = f"{f.name}-{seed}" if "str" in kind else seed * 100 + i
    return values


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_a_record_matches_what_dataclass_generates(cls):
    ref = generated(cls)
    assert dataclasses.is_dataclass(cls)
    assert [(p.name, p.kind, repr(p.default), p.annotation) for p in inspect.signature(cls).parameters.values()] == \
        [(p.name, p.kind, repr(p.default), p.annotation) for p in inspect.signature(ref).parameters.values()]
    assert cls.__match_args__ == ref.__match_args__
    required = {f.name: v for f, v in zip(dataclasses.fields(cls), sample(cls, 1).values())
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    # defaults: the same values, and a fresh list or dict per instance where the field has a factory
    ours, theirs = cls(**required), ref(**required)
    assert repr(ours) == repr(theirs)
    other = cls(**required)
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            assert getattr(ours, f.name) == f.default_factory() and getattr(ours, f.name) is not getattr(other, f.name)
    # every field given, by keyword and by position
    full = sample(cls, 2)
    assert repr(cls(**full)) == repr(ref(**full))
    assert repr(cls(*full.values())) == repr(ref(*full.values()))
    assert dataclasses.asdict(cls(**full)) == dataclasses.asdict(ref(**full))
    # equality: same class and every field equal; another class is NotImplemented (so False)
    assert cls(**full) == cls(**copy.deepcopy(full))
    assert (cls(**full) == cls(**sample(cls, 3))) is False
    assert (cls(**full) == ref(**full)) is False
    assert cls(**full).__eq__(object()) is NotImplemented
    changed = dataclasses.replace(cls(**full), **{dataclasses.fields(cls)[-1].name: None})
    assert changed != cls(**full) and type(changed) is cls
    with pytest.raises(TypeError):
        cls(**full, unknown_field=1)
    if cls is Range:
        assert hash(cls(**full)) == hash(ref(**full)) == hash(cls(**copy.deepcopy(full)))
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls(**full).low = 5
        with pytest.raises(dataclasses.FrozenInstanceError):
            del cls(**full).low
    else:
        assert cls.__hash__ is None and ref.__hash__ is None


def test_a_record_that_holds_itself_is_shown_once():
    job = Job(id="a", command="true")
    job.fields["self"] = job
    assert "fields={'self': ...}" in repr(job)
