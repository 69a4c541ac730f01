"""Stage `download`: the competition's files into data/raw/<comp>/, untouched, plus `.complete`.

Reads:  configs/competitions/<comp>.yaml; a local folder (--dir) or zip (--zip), which override
        any source; else by `source:` the built-in demo, or Kaggle (credentials: KAGGLE_API_TOKEN,
        ~/.kaggle/access_token or ~/.kaggle/kaggle.json).
Writes: data/raw/<comp>/ with `.complete` written last. Everything lands in a temp folder beside
        it first and is renamed into place, so a killed download leaves no `.complete`; a rerun
        once `.complete` exists does nothing.
Run:    python -m medalist.stages.download --comp NAME [--dir PATH | --zip PATH.zip]   (make download)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest
from tqdm import tqdm

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition
from medalist.core.config import Paths, UserError, cli, stage_parser
from medalist.clients.kaggle import Api

STAMP = ".complete"


def run(comp: Competition, comp_dir: Path | None = None, comp_zip: Path | None = None, backoff_base: float = 2.0) -> Path:
    raw = Paths(comp.name).raw
    shown = raw.relative_to(C.root())
    if (raw / STAMP).exists():
        print(f"{shown} is already complete (delete it to download again)")
        return raw
    if comp_dir and comp_zip:
        raise UserError("pass COMP_DIR or COMP_ZIP, not both")
    if raw.exists():
        raise UserError(
            f"{shown} exists without a {STAMP} stamp (not made by `make download`): "
            "move it away, then rerun (COMP_DIR=<its new place> copies it back)"
        )
    if comp_dir is None and comp_zip is None and comp.source == "local":
        raise UserError(
            f"'{comp.name}' is a local competition: pass COMP_DIR=path/to/folder or COMP_ZIP=path.zip"
        )

    raw.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{comp.name}.", suffix=".tmp", dir=raw.parent))
    try:
        files = stage / comp.name
        if comp_dir is not None:
            origin = str(comp_dir)
            _copy_dir(Path(comp_dir), files)
        elif comp_zip is not None:
            origin = str(comp_zip)
            _unzip(Path(comp_zip), files)
        elif comp.source == "demo":
            from medalist.demos.text import write_demo  # only the demo needs its generator

            origin = "demo"
            files.mkdir()
            write_demo(files)
        else:
            origin = f"kaggle:{comp.slug}"
            archive = stage / f"{comp.slug}.zip"
            _download_kaggle(comp, archive, backoff_base)
            _unzip(archive, files, what=f"Kaggle's download for '{comp.slug}'")
        _check_files(comp, files, origin)
        stamp = {
            "source": origin,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()),
        }
        (files / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        os.replace(files, raw)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"wrote {shown} from {origin}")
    return raw


def _copy_dir(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise UserError(f"COMP_DIR={src}: not a folder")
    shutil.copytree(src, dst)


def _unzip(archive: Path, dst: Path, what: str | None = None) -> None:
    what = what or f"COMP_ZIP={archive}"
    if not archive.is_file():
        raise UserError(f"{what}: file not found")
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dst)  # extractall drops absolute paths and '..' parts
    except zipfile.BadZipFile:
        raise UserError(f"{what}: not a zip file") from None


def _check_files(comp: Competition, files: Path, origin: str) -> None:
    """A source without train/test/sample_submission must not be stamped complete."""
    f = comp.files
    missing = [name for name in (f.train, f.test, f.sample_submission) if not (files / name).is_file()]
    if missing:
        has = sorted(p.name for p in files.iterdir()) if files.is_dir() else []
        raise UserError(
            f"{origin} has no {', '.join(missing)} (it has: {', '.join(has) or 'nothing'}); "
            f"fix `files:` in configs/competitions/{comp.name}.yaml"
        )


def _download_kaggle(comp: Competition, archive: Path, backoff_base: float) -> None:
    def fetch() -> None:
        request = ApiDownloadDataFilesRequest()
        request.competition_name = comp.slug
        # The SDK follows Kaggle's redirect and hands back the streamed file response.
        response = api.competitions.download_data_files(request)
        total = int(response.headers.get("Content-Length") or 0) or None
        with response, archive.open("wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"download {comp.slug}", file=sys.stderr, disable=None
        ) as bar:
            for chunk in response.iter_content(chunk_size=1 << 20):
                out.write(chunk)
                bar.update(len(chunk))

    with Api(comp, backoff_base) as api:
        api.call("download", fetch)


@cli
def main(argv: list[str] | None = None) -> None:
    p = stage_parser("medalist.stages.download", __doc__)
    p.add_argument("--dir", default="", help="copy the competition files from this folder")
    p.add_argument("--zip", default="", help="unzip the competition files from this zip")
    args = p.parse_args(argv)
    # Make passes `--dir "$(COMP_DIR)"`: an empty value means not given
    comp_dir = Path(args.dir).expanduser() if args.dir else None
    comp_zip = Path(args.zip).expanduser() if args.zip else None
    run(load_competition(args.comp), comp_dir=comp_dir, comp_zip=comp_zip)


if __name__ == "__main__":
    main()
