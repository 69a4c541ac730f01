"""The code dataset's wheels: what a bundle carries besides Kaggle's image, fetched for its platform.

Kaggle's image already holds torch, torchvision, numpy and everything they depend on (CUDA's
`nvidia-*` wheels, triton, pillow, sympy …): those are "from the image" and get no wheel. The rest
of requirements.txt's dependency closure, each at the version installed here, is downloaded as
wheels for the image's CPython and manylinux glibc — one `pip download` for all of them, cached
in `.cache/wheels/<python>-<platform>/` so a second bundle downloads nothing. A pin with no wheel
on the index (an sdist only) is built here when it is pure Python; one that needs a compiler stops
the bundle with one line. `include_torch=True` (`BUNDLE_TORCH=1`) turns the image rule off: every
package of the closure, torch and CUDA included, gets a wheel.

Tests pass `wheelhouse=` (or set MEDALIST_WHEELHOUSE): pip then reads that folder only
(`--no-index --find-links`), with no pip configuration of the machine, and never a registry.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from medalist.core.config import UserError, root

IMAGE_ROOTS = ("torch", "torchvision", "numpy")
# always from the image, whatever torch depends on here: CUDA runtime wheels and the compiler
_IMAGE_NAMES = frozenset({"torch", "torchvision", "triton"})
# requirements.txt's test-only tools: the kernel never runs the test suite
TEST_ONLY = frozenset({"pytest", "hypothesis"})
# the glibc the bundle targets: Kaggle's image has a newer one (Ubuntu 22.04, 2.35), and so has
# any machine `make rerun` installs the same wheels on; older manylinux tags are accepted too
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
_LEGACY_MANYLINUX = {"2014": 17, "2010": 12, "1": 5}  # PEP 599/571/513 names → glibc 2.<minor>
_MANYLINUX = re.compile(r"manylinux(?:_2_(\d+)|(2014|2010|1))_(\w+)$")


def installed(path: Sequence[str] | None = None) -> dict[str, md.Distribution]:
    """Installed distributions by canonical name; the first on the path wins, as for an import."""
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions(**({} if path is None else {"path": list(path)})):
        found.setdefault(canonicalize_name(dist.metadata["Name"] or ""), dist)
    return found


def closure(roots: Iterable[Requirement | str], dists: dict[str, md.Distribution]) -> set[str]:
    """Canonical names of `roots` and everything they require as installed in `dists`.

    Markers are evaluated for this interpreter; an extra counts only where a requirement asks
    for it by name (`cuda-toolkit[cublas]`), never the optional extras nobody named."""
    done: dict[str, set[str]] = {}
    todo = [r if isinstance(r, Requirement) else Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name not in dists:
            raise UserError(f"{req.name} is required (by {req}) but not installed here: rebuild the venv "
                            "(rm -rf .venv && make venv)")
        extras = {""} | {canonicalize_name(e) for e in req.extras}
        new = extras - done.setdefault(name, set())
        if not new:
            continue
        done[name] |= new
        for line in dists[name].requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in new):
                todo.append(dep)
    return set(done)


def _always_image(name: str) -> bool:
    return name in _IMAGE_NAMES or name.startswith("nvidia-")


def image_set(dists: dict[str, md.Distribution] | None = None) -> set[str]:
    """Canonical names Kaggle's image provides: IMAGE_ROOTS' closure, torch, triton, nvidia-*."""
    dists = installed() if dists is None else dists
    return closure(IMAGE_ROOTS, dists) | {n for n in dists if _always_image(n)}


def _read_requirements(path: Path) -> list[Requirement]:
    reqs = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise UserError(f"{path}:{number}: not a requirement a bundle can pin ({line!r}): {e}") from None
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            reqs.append(req)
    return reqs


def plan(requirements: Path, include_torch: bool = False) -> list[tuple[str, str]]:
    """(canonical name, installed version) of every distribution the bundle carries, sorted.

    requirements.txt's names (less TEST_ONLY) and their closure as installed here, minus the
    image set unless `include_torch`. An installed version that differs from requirements.txt's
    pin is an error: the bundle must hold what was trained with, and that is what was pinned."""
    dists = installed()
    roots = []
    for req in _read_requirements(requirements):
        name = canonicalize_name(req.name)
        if name in TEST_ONLY:
            continue
        if name not in dists:
            raise UserError(f"{req.name} ({requirements}) is not installed here: rebuild the venv "
                            "(rm -rf .venv && make venv)")
        have = dists[name].version
        if not req.specifier.contains(have, prereleases=True):
            raise UserError(f"{req.name} {have} is installed but {requirements} pins {req}: rebuild the venv "
                            "(rm -rf .venv && make venv)")
        roots.append(req)
    names = closure(roots, dists)
    if not include_torch:
        names -= image_set(dists)
    return sorted((name, dists[name].version) for name in names)


def platform_tags(platform: str) -> list[str]:
    """The wheel platforms a target accepts: a manylinux tag takes every older glibc's too."""
    m = _MANYLINUX.match(platform)
    if not m:
        return [platform]
    minor = int(m[1]) if m[1] else _LEGACY_MANYLINUX[m[2]]
    arch = m[3]
    tags = [f"manylinux_2_{v}_{arch}" for v in range(minor, 4, -1)]
    return tags + [f"manylinux{alias}_{arch}" for alias, v in _LEGACY_MANYLINUX.items() if v <= minor]


def default_cache(python_version: str, platform: str = DEFAULT_PLATFORM) -> Path:
    """Where downloaded wheels stay between bundles: inside the project, never the user's home."""
    return root() / ".cache" / "wheels" / f"{python_version}-{platform}"


def run_pip(args: Sequence[str | Path], hermetic: bool, python: Path | str = sys.executable
            ) -> subprocess.CompletedProcess[str]:
    """`python -m pip …`, output captured. `hermetic`: none of the machine's pip settings (index,
    find-links, constraints) reach it, so a test or a build reads only the folders it names."""
    env = dict(os.environ)
    if hermetic:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run([str(python), "-m", "pip", *map(str, args)], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def pip_error(output: str) -> str:
    """pip's last error line, for a one-line message: a Python exception a build raised
    (`ModuleNotFoundError: No module named 'hatchling'`) before pip's own `ERROR:` lines, and
    those before its last line."""
    lines = [line.strip(" ╰─>│×") for line in output.splitlines()]
    lines = [line for line in lines if line]
    raised = [line for line in lines if re.match(r"[A-Za-z_.]*(Error|Exception): ", line)]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return ((raised or errors or lines or ["pip failed with no output"])[-1]).removeprefix("ERROR:").strip()


def _wheel_key(path: Path) -> tuple[str, Version] | None:
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return None
    return canonicalize_name(name), version


def _index(folder: Path) -> dict[tuple[str, Version], Path]:
    found = {}
    for whl in sorted(folder.glob("*.whl")):
        key = _wheel_key(whl)
        if key is not None:
            found.setdefault(key, whl)
    return found


def _key(pin: tuple[str, str]) -> tuple[str, Version]:
    return canonicalize_name(pin[0]), Version(pin[1])


def _source_args(wheelhouse: Path | None) -> list[str]:
    return ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse else []


def _build_pure(pin: tuple[str, str], cache: Path, target: str, wheelhouse: Path | None) -> None:
    """A pin the index has as an sdist only: its wheel built here, which must be pure Python."""
    name, version = pin
    # from an index, the sdist's build backend (hatchling, flit …) comes from there too; a
    # wheelhouse has none, so the build uses what is installed here
    isolation = ["--no-build-isolation"] if wheelhouse else []
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        res = run_pip(["wheel", "--no-deps", *isolation, "--no-binary", name, *_source_args(wheelhouse),
                       "-w", tmp, f"{name}=={version}"], hermetic=wheelhouse is not None)
        if res.returncode:
            raise UserError(f"{name}=={version} has no wheel for {target} and building one here failed: "
                            f"{pip_error(res.stdout)}")
        (whl,) = Path(tmp).glob("*.whl")
        tags = {str(t) for t in parse_wheel_filename(whl.name)[3]}
        if "py3-none-any" not in tags:
            raise UserError(f"{name}=={version} has no wheel for {target} and is not pure Python (built here: "
                            f"{whl.name}): pin a version that has one, or drop it from requirements.txt")
        os.replace(whl, cache / whl.name)


def _download(pins: list[tuple[str, str]], cache: Path, python_version: str, platform: str,
              wheelhouse: Path | None) -> None:
    """Every pin into `cache`: one `pip download` for all; a pin it finds no wheel for is built
    here (pip names one such pin per failure, so k sdist-only pins take k + 1 calls)."""
    target = f"CPython {python_version} on {platform}"
    tags = [a for tag in platform_tags(platform) for a in ("--platform", tag)]
    pending = list(pins)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        while pending:
            res = run_pip(["download", "--only-binary=:all:", "--no-deps", "--implementation", "cp",
                           "--python-version", python_version, *tags, *_source_args(wheelhouse), "-d", tmp,
                           *(f"{n}=={v}" for n, v in pending)], hermetic=wheelhouse is not None)
            for whl in Path(tmp).glob("*.whl"):
                os.replace(whl, cache / whl.name)
            cached = _index(cache)
            pending = [p for p in pending if _key(p) not in cached]
            if res.returncode == 0:
                if pending:
                    raise UserError(f"pip download left out {', '.join(f'{n}=={v}' for n, v in pending)}")
                return
            m = re.search(r"No matching distribution found for (\S+)", res.stdout)
            by_name = {canonicalize_name(n): (n, v) for n, v in pending}
            pin = by_name.get(canonicalize_name(Requirement(m[1]).name)) if m else None
            if pin is None:
                raise UserError(f"pip download for {target} failed: {pip_error(res.stdout)}")
            needs = dict(re.findall(r"(\S+) Requires-Python (\S+?)[;\s]", res.stdout + "\n"))
            if pin[1] in needs:
                raise UserError(f"{pin[0]}=={pin[1]} requires Python {needs[pin[1]]}, not {python_version}: give "
                                "the target's whole Python version (e.g. 3.11.13)")
            _build_pure(pin, cache, target, wheelhouse)
            pending.remove(pin)


def _place(src: Path, dest: Path) -> None:
    """`src` at `dest`: a hard link where the filesystem allows, else a copy; atomically."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def fetch(dest: Path, pins: Iterable[tuple[str, str]], python_version: str, platform: str = DEFAULT_PLATFORM,
          wheelhouse: Path | None = None, cache: Path | None = None) -> list[Path]:
    """A wheel of each (name, version) pin in `dest` for CPython `python_version` on
    `platform` (and every older manylinux; pure wheels always): the wheels' paths, in pin order.
    `python_version` is the target's whole version ("3.11.13"): pip checks each pin's
    Requires-Python against it, and "3.11" would mean 3.11.0.

    Wheels come from `cache` (default `default_cache(...)`) and what is missing there from the
    index (`wheelhouse` / MEDALIST_WHEELHOUSE: that folder only, no registry)."""
    pins = list(pins)
    wheelhouse = wheelhouse or (Path(os.environ["MEDALIST_WHEELHOUSE"]) if os.environ.get("MEDALIST_WHEELHOUSE")
                                else None)
    cache = Path(cache) if cache else default_cache(python_version, platform)
    cache.mkdir(parents=True, exist_ok=True)
    cached = _index(cache)
    missing = [p for p in pins if _key(p) not in cached]
    if missing:
        _download(missing, cache, python_version, platform, wheelhouse)
        cached = _index(cache)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for pin in pins:
        src = cached[_key(pin)]
        _place(src, dest / src.name)
        out.append(dest / src.name)
    return out


def build_medalist_wheel(dest: Path, source: Path | None = None) -> Path:
    """A wheel of the checkout at `source` (default: the project root) in `dest`: its path.

    Built from a temp copy of pyproject.toml, README.md and src/medalist, so the checkout gets no
    build/ or *.egg-info, and the wheel can hold nothing but the package (checked)."""
    source = Path(source) if source else root()
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="medalist-wheel-") as tmp:
        tree = Path(tmp) / "tree"
        (tree / "src").mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, tree / name)
        shutil.copytree(source / "src" / "medalist", tree / "src" / "medalist",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out = Path(tmp) / "out"
        res = run_pip(["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, tree], hermetic=True)
        if res.returncode:
            raise UserError(f"building the medalist wheel failed: {pip_error(res.stdout)}")
        (whl,) = out.glob("*.whl")
        name, version, _, _ = parse_wheel_filename(whl.name)
        allowed = (f"{name}/", f"{name}-{version}.dist-info/")
        with zipfile.ZipFile(whl) as zf:
            stray = [n for n in zf.namelist() if not n.startswith(allowed)]
        if stray:
            raise UserError(f"the medalist wheel holds files outside the package ({', '.join(stray[:5])}): "
                            "check [tool.setuptools] in pyproject.toml")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(whl, dest / whl.name)
    return dest / whl.name


def check_wheels(folder: Path, include_torch: bool = False) -> None:
    """The bundle's guard on its code folder: every file a wheel, one version of each package,
    and — unless `include_torch` — no torch, torchvision, triton or nvidia-* (the image has them)."""
    seen: dict[str, Path] = {}
    heavy = []
    for whl in sorted(Path(folder).glob("*.whl")):
        key = _wheel_key(whl)
        if key is None:
            raise UserError(f"{whl} is not a wheel's file name")
        if key[0] in seen:
            raise UserError(f"{folder} holds two wheels of {key[0]}: {seen[key[0]].name} and {whl.name}")
        seen[key[0]] = whl
        if _always_image(key[0]):
            heavy.append(whl.name)
    if heavy and not include_torch:
        raise UserError(f"{folder} holds {', '.join(heavy)}: Kaggle's image has torch and CUDA "
                        "(bundle them only with BUNDLE_TORCH=1)")
