"""Ground floor: strict YAML → frozen dataclass loading, project paths, user errors.

Unknown keys and wrong types are errors (nanoGPT's configurator habit): a typo in a config
must stop the run with one line, not silently train the default.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2, no traceback."""


class _OutOfRange(UserError):
    """The value has the right type but not an allowed value: no other union member may take it."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "null", int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric config field: `Annotated[float, Range(gt=0)]`.

    Checked by `from_dict` with one line naming the field, so a value out of range never reaches
    a library that would answer with a traceback."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def check(self, value: float, where: str) -> None:
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if not ok:
            raise _OutOfRange(f"{where}: {value!r} is out of range (must be {self})")

    def __str__(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)


Positive = Range(gt=0)
AtLeastOne = Range(ge=1)
NonNegative = Range(ge=0)
Fraction = Range(ge=0, le=1)


def root() -> Path:
    """Project root: where data/, results/, configs/ … live. Tests point it at a temp dir."""
    return Path(os.environ.get("MEDALIST_ROOT", os.getcwd())).resolve()


def configs_dir() -> Path:
    env = os.environ.get("MEDALIST_CONFIGS")
    return Path(env).resolve() if env else root() / "configs"


@dataclasses.dataclass(frozen=True)
class Paths:
    """Every path of DESIGN.md's file contracts for one competition."""

    comp: str

    @property
    def raw(self) -> Path:
        return root() / "data" / "raw" / self.comp

    @property
    def processed(self) -> Path:
        return root() / "data" / "processed" / self.comp

    @property
    def generated(self) -> Path:
        return root() / "data" / "generated" / self.comp

    @property
    def results(self) -> Path:
        return root() / "results" / self.comp

    def run(self, run: str) -> Path:
        return self.results / run

    @property
    def images(self) -> Path:
        return root() / "images" / self.comp

    @property
    def logs(self) -> Path:
        return root() / "logs" / self.comp

    @property
    def submission(self) -> Path:
        return root() / "submission" / self.comp


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce int→float) `value` against annotation `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Annotated:
        value = _check_type(value, args[0], where)
        for meta in tp.__metadata__:
            if isinstance(meta, Range) and value is not None:
                meta.check(value, where)
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _check_type(value, a, where)
            except _OutOfRange:
                raise
            except UserError:
                if isinstance(value, dict) and dataclasses.is_dataclass(a):
                    raise  # a mapping meant for this section: its own message (unknown key …) says more
                continue
        raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"{where}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserError(f"{where}: must be one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_check_type(k, kt, where): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: missing required key '{name}'")
    obj = cls(**kwargs)
    post = getattr(obj, "validate", None)
    if post:
        post(where)
    return obj


def load_yaml(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at top level")
    return data


def load(cls: type[T], path: Path) -> T:
    return from_dict(cls, load_yaml(path), str(path.name))


def to_dict(obj: Any) -> Any:
    """Dataclass → plain YAML-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def cli(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a CLI entry point: a UserError becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


def git_sha() -> str:
    """Short SHA of the project's HEAD ('nogit' outside a repository), '+dirty' if changed."""
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root(), capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root(),
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    if not sha:
        return "nogit"
    return sha + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (written into metrics.json)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "accelerate", "peft", "scikit-learn", "pandas", "numpy", "medalist"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children, in MiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def stage_parser(module: str, doc: str | None):
    """The command line every stage starts from: `python -m <module> --comp NAME …`."""
    import argparse

    from medalist.core.runtime import configure_threads

    configure_threads()  # before the stage imports torch: each process gets its share of the cores
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or module).strip().splitlines()[0])
    ap.add_argument("--comp", default="demo", help="competition: configs/competitions/<comp>.yaml")
    return ap
