"""An image-like venv and a run with the network off: where `make rerun` proves a bundle.

`image_venv` makes a fresh venv that holds what Kaggle's image would and nothing else of this
project's environment: torch, torchvision, numpy and their dependency closure, linked (not copied:
torch and CUDA are gigabytes) from the venv they are installed in. `install` puts a bundle's code
folder into it the way the kernel does (no index, no dependency resolution). `run_offline` runs a
command in a new Linux network namespace — only a loopback that reaches nothing outside it — and
refuses to run at all where no namespace can be made, so a rerun that passed never used the network.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from medalist.bundle.wheels import installed, image_set, pip_error, run_pip
from medalist.core.config import UserError

# variables that would reach into this project's environment from inside the sandbox
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONEXECUTABLE", "VIRTUAL_ENV")
# in the image venv: what the image must hold, and a package of this project it must not
_IMAGE_IMPORTS = "import torch, torchvision, numpy"
_NOT_IN_IMAGE = "sklearn"


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) less what would import from outside the sandbox's venv
    (PYTHONPATH …) or point pip at this machine's indexes and wheel folders (PIP_*)."""
    env = dict(os.environ if env is None else env)
    return {k: v for k, v in env.items() if k not in _LEAKY and not k.startswith("PIP_")}


def _venv_cfg(venv: Path) -> dict[str, str]:
    cfg = venv / "pyvenv.cfg"
    if not cfg.is_file():
        raise UserError(f"{venv} is not a venv (no pyvenv.cfg)")
    pairs = (line.split("=", 1) for line in cfg.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _base_python(source_venv: Path | None) -> Path:
    """The interpreter a venv was made from: it has none of the venv's packages."""
    if source_venv is None:
        return Path(getattr(sys, "_base_executable", sys.executable))
    cfg = _venv_cfg(source_venv)
    if "executable" in cfg:
        return Path(cfg["executable"])
    version = cfg.get("version", cfg.get("version_info", ""))
    names = [f"python{'.'.join(version.split('.')[:2])}", "python3"] if version else ["python3"]
    return next((Path(cfg["home"]) / n for n in names if (Path(cfg["home"]) / n).exists()), Path(cfg["home"]) / "python3")


def _sys_path(python: Path) -> list[str]:
    res = subprocess.run([str(python), "-c", "import json, sys; print(json.dumps(sys.path))"], env=clean_env(),
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def _files(dist) -> set[tuple[str, ...]]:
    """The paths a distribution installed, relative to its site folder (scripts outside it left out)."""
    if dist.files is not None:
        return {tuple(str(f).split("/")) for f in dist.files if not str(f).startswith("..")}
    # no RECORD (an old installer): its top-level modules and its metadata folder
    tops = (dist.read_text("top_level.txt") or "").split()
    return {(name,) for name in tops} | {(Path(dist._path).name,)}


def _mirror(base: Path, rel: tuple[str, ...], mine: set[tuple[str, ...]], theirs: set[tuple[str, ...]],
            out: Path) -> None:
    """Link `base/rel` into `out`: whole where nothing of another package lies under it (a
    package folder, a module, a `.dist-info`), else as a real folder of linked entries (the
    `nvidia/` namespace or `__pycache__/` that other packages share)."""
    target = out.joinpath(*rel)
    if rel not in theirs:
        if not target.exists():
            target.symlink_to(base.joinpath(*rel))
        return
    target.mkdir(exist_ok=True)
    children = {p[:len(rel) + 1] for p in mine if p[:len(rel)] == rel and len(p) > len(rel)}
    for child in sorted(children):
        _mirror(base, child, mine, theirs, out)


def _prefixes(paths: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {p[:i] for p in paths for i in range(1, len(p) + 1)}


def _check_python(python: Path, code: str) -> str:
    """'' when `code` runs in `python`, else the last line it printed."""
    res = subprocess.run([str(python), "-c", code], env=clean_env(), capture_output=True, text=True)
    if res.returncode == 0:
        return ""
    return ([line for line in res.stderr.splitlines() if line.strip()] or [f"exit code {res.returncode}"])[-1]


def image_venv(dest: Path, source_venv: Path | None = None) -> Path:
    """A new venv at `dest` in which only torch, torchvision, numpy and their dependency
    closure (as installed in `source_venv`, default this interpreter's environment) are
    importable, linked from there into `dest/image-site/`; pip sees them as installed. Returns
    its python. Checked: those three import, and scikit-learn does not."""
    dest = Path(dest).resolve()
    if dest.exists():
        shutil.rmtree(dest)
    base = _base_python(source_venv)
    res = subprocess.run([str(base), "-m", "venv", str(dest)], env=clean_env(), capture_output=True, text=True)
    if res.returncode:
        raise UserError(f"python -m venv {dest} failed: {pip_error(res.stdout + res.stderr)}")
    python = dest / "bin" / "python"

    source_python = None if source_venv is None else Path(source_venv) / "bin" / "python"
    dists = installed(None if source_python is None else _sys_path(source_python))
    image = image_set(dists)
    by_base: dict[Path, tuple[set, set]] = {}
    for name, dist in dists.items():
        mine, theirs = by_base.setdefault(Path(dist.locate_file("")).resolve(), (set(), set()))
        (mine if name in image else theirs).update(_files(dist))
    site = dest / "image-site"
    site.mkdir()
    for base_dir, (mine, theirs) in sorted(by_base.items()):
        theirs_prefixes = _prefixes(theirs)
        for top in sorted({p[:1] for p in mine}):
            _mirror(base_dir, top, mine, theirs_prefixes, site)

    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             env=clean_env(), capture_output=True, text=True, check=True).stdout.strip()
    # venv's own setuptools (Python < 3.12 puts one in) would shadow the image's newer one
    shadowing = sorted(set(installed([purelib])) & image - {"pip"})
    if shadowing:
        res = run_pip(["uninstall", "-y", "-q", *shadowing], hermetic=True, python=python)
        if res.returncode:
            raise UserError(f"removing {', '.join(shadowing)} from {dest} failed: {pip_error(res.stdout)}")
    # addsitedir, not a bare path line: the image's own .pth files (setuptools' distutils hook) run too
    (Path(purelib) / "_image_site.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n")

    problem = _check_python(python, _IMAGE_IMPORTS)
    if problem:
        raise UserError(f"the image venv {dest} cannot {_IMAGE_IMPORTS!r}: {problem}")
    if not _check_python(python, f"import {_NOT_IN_IMAGE}"):
        raise UserError(f"the image venv {dest} imports {_NOT_IN_IMAGE}, which Kaggle's image would get from the "
                        "bundle only: it is not isolated from this environment")
    return python


def install(python: Path, code_dir: Path) -> None:
    """Every wheel of `code_dir` into the venv of `python`, as the kernel installs them: no
    index, no dependency resolution, none of this machine's pip settings. Then `pip check`: a
    requirement that neither the bundle nor the image meets is an error."""
    wheels = sorted(Path(code_dir).glob("*.whl"))
    if not wheels:
        raise UserError(f"{code_dir} holds no wheel")
    res = run_pip(["install", "-q", "--no-index", "--no-deps", "--find-links", code_dir, *wheels],
                  hermetic=True, python=python)
    if res.returncode:
        raise UserError(f"installing {code_dir} into {python} failed: {pip_error(res.stdout)}")
    # the bundle is complete when every requirement of what is installed is met, by it or the image
    res = run_pip(["check"], hermetic=True, python=python)
    if res.returncode:
        raise UserError(f"{code_dir} is incomplete: {pip_error(res.stdout)}")


@functools.lru_cache(maxsize=None)
def _probe(unshare: str, root: bool) -> list[str]:
    prefix = [unshare, "-n"] if root else [unshare, "-rn"]
    res = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if res.returncode:
        reason = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        raise UserError(f"cannot make a network namespace ({' '.join(prefix)}: {reason}): the rerun must run "
                        "offline; run as root or enable user namespaces")
    return prefix


def namespace_prefix() -> list[str]:
    """The command prefix that runs a command with no network: `unshare -n` as root, else
    `unshare -rn` (a user namespace). Probed once; never a fallback to a run with network."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise UserError("cannot make a network namespace (no unshare on PATH: install util-linux): the rerun "
                        "must run offline; run as root or enable user namespaces")
    return list(_probe(unshare, os.geteuid() == 0))


def run_offline(cmd: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, log: Path | None = None) -> int:
    """`cmd` in a new network namespace, its output streamed to stdout (and to `log`): its exit code."""
    prefix = namespace_prefix()
    # a new namespace's loopback is down: up where `ip` exists, so a program may talk to itself
    # over 127.0.0.1 as in Kaggle's kernels; it still reaches nothing outside the namespace
    wrapped = [*prefix, "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh", *cmd]
    print(f"rerun: ran in a network namespace ({' '.join(['unshare', *prefix[1:]])}): no network", flush=True)
    out = getattr(sys.stdout, "buffer", None)
    sink = None
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        sink = open(log, "wb")
    try:
        with subprocess.Popen(wrapped, env=dict(env), cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            while chunk := proc.stdout.read1(65536):
                if out is not None:
                    out.write(chunk)
                    out.flush()
                else:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                if sink is not None:
                    sink.write(chunk)
                    sink.flush()
            return proc.wait()
    finally:
        if sink is not None:
            sink.close()
