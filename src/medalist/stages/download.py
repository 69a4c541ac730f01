"""Stage `download`: the competition's files into data/raw/<comp>/, untouched, plus `.complete`.

Reads:  configs/competitions/<comp>.yaml; a local folder (--dir) or zip (--zip), which override
        any source; else by `source:` the built-in demo, or Kaggle (credentials: KAGGLE_API_TOKEN,
        ~/.kaggle/access_token or ~/.kaggle/kaggle.json).
Writes: data/raw/<comp>/ holding `.complete`, a JSON stamp of where the files came from.
        Everything lands in a temp folder beside it first, passes the data validation `folds`
        applies (`read_raw`), gets its stamp and is renamed into place: rejected or half-fetched
        data never shows up in data/raw/<comp>/. A message about one of its files names it where
        the user has it (in the COMP_DIR, or as `<zip>:<member>`), not in the temp folder.
        One download per competition at a time (data/raw/.<comp>.download.lock): a second one
        waits, then finds the data complete. A download first removes the temp folders a killed
        one left (data/raw/.<comp>.*.tmp).
        Once stamped, a rerun with the same source does nothing; a rerun naming another (or a
        changed) COMP_DIR / COMP_ZIP stops with one line saying to remove data/raw/<comp> first.
        From Kaggle, the competition's metadata is asked first and the stamp records
        `code_competition` (Kaggle's isKernelsSubmissionsOnly: only a notebook may submit). A
        config whose `submission.via` is csv for such a competition stops with one line before
        anything is downloaded (`make submit` of a CSV would be refused); `via: notebook` for a
        competition that takes CSVs is a warning line (a notebook submission works there too).
        Zips must unpack to at most MEDALIST_UNZIP_MAX_GB (default 200) GiB in all and at most
        MEDALIST_UNZIP_MAX_RATIO (default 200) times their own size, so a zip bomb is refused.
        Zips inside the download (Kaggle's train.zip, train.csv.zip) are unpacked where they lie
        and removed, all levels together within the same limits.
        Image URLs (`inputs.image.urls`): every image is fetched into data/raw/<comp>/<urls.dir>/
        (clients/images_http.py) and each row's outcome listed in download_report.csv (url, id,
        split, status, reason). Fetched images wait in data/raw/.<comp>.url-images/ until the
        download is stamped, so a killed download, or one refused because more than
        `urls.max_missing` of the rows have no image, keeps them: a rerun fetches only the rest.
Run:    python -m medalist.stages.download --comp NAME [--dir PATH | --zip PATH.zip]   (make download)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from kagglesdk.competitions.types.competition_api_service import (
    ApiDownloadDataFilesRequest,
    ApiGetCompetitionRequest,
)

from medalist.clients.images_http import Fetched, fetch_images
from medalist.clients.kaggle import Api
from medalist.core import config as C
from medalist.core.competition import Competition, image_urls, load_competition, read_raw
from medalist.core.config import Paths, UserError, cli, stage_parser
from medalist.core.io import write_csv
from medalist.core.locks import stage_lock
from medalist.core.progress import progress

STAMP = ".complete"
REPORT = "download_report.csv"
MAX_NESTING = 3  # zips in zips in zips: Kaggle nests one level; deeper is an archive quine or a bomb
GIB = 1 << 30
# Kaggle's CSV zips unpack to 3-20x; 200x leaves room for very repetitive tables, and a zip
# bomb (1 MB → 1 GiB is 1000x) still stops before it fills the disk.
UNZIP_LIMITS = {"MEDALIST_UNZIP_MAX_GB": 200.0, "MEDALIST_UNZIP_MAX_RATIO": 200.0}
# `source: demo` competitions → the module of medalist.demos that writes their files
DEMOS = {"demo": "text", "demo-images": "images", "demo-products": "products"}


def run(comp: Competition, comp_dir: Path | None = None, comp_zip: Path | None = None, backoff_base: float = 2.0) -> Path:
    if comp_dir and comp_zip:
        raise UserError("pass COMP_DIR or COMP_ZIP, not both")
    paths = Paths(comp.name)
    raw = paths.raw
    shown = raw.relative_to(C.root())
    cache = raw.parent / f".{comp.name}.url-images"  # fetched images, kept until the data is stamped
    leftovers = [(raw.parent, f".{comp.name}.*.tmp"), (cache, "*.tmp")]
    with stage_lock(paths, "download", leftovers):
        if (raw / STAMP).exists():
            shutil.rmtree(cache, ignore_errors=True)  # a download killed right after its rename left it
            _check_same_source(raw, comp_dir, comp_zip)
            _check_via(comp, _stamped(raw).get("code_competition"))
            print(f"{shown} is already complete (`rm -rf {shown}` to download again)")
            return raw
        if raw.exists():
            raise UserError(
                f"{shown} exists without a {STAMP} stamp (not made by `make download`): "
                f"move it away or `rm -rf {shown}`, then rerun (COMP_DIR=<its new place> copies it back)"
            )
        if comp_dir is None and comp_zip is None and comp.source == "local":
            raise UserError(
                f"'{comp.name}' is a local competition: pass COMP_DIR=path/to/folder or COMP_ZIP=path.zip"
            )
        raw.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{comp.name}.", suffix=".tmp", dir=raw.parent))
        try:
            files = stage / comp.name
            with _named_as_given(files, comp, comp_dir, comp_zip):
                origin = _fetch(comp, comp_dir, comp_zip, stage, files, backoff_base)
                _check_files(comp, files, origin)
                if comp.inputs.image is not None and comp.inputs.image.urls is not None:
                    _fetch_url_images(comp, files, cache, origin)
                _validate(comp, files, origin)
            stamp = {
                **origin,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file()),
            }
            # The stamp goes in before the rename, so the folder appears complete or not at all.
            (files / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
            os.replace(files, raw)
            shutil.rmtree(cache, ignore_errors=True)  # its images are linked into raw now
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    print(f"wrote {shown} from {origin['source']}")
    return raw


def _fetch(comp: Competition, comp_dir: Path | None, comp_zip: Path | None, stage: Path, files: Path,
           backoff_base: float) -> dict:
    """Put the source's files into `files`; return what the stamp records about the source."""
    if comp_dir is not None:
        origin = _origin_of(comp_dir, None)
        if not comp_dir.is_dir():
            raise UserError(f"COMP_DIR={comp_dir}: not a folder")
        shutil.copytree(comp_dir, files)
        inner = sum(p.stat().st_size for p in _zips_in(files))
        _unpack_nested(files, f"COMP_DIR={comp_dir}", _Budget(packed=inner))
    elif comp_zip is not None:
        origin = _origin_of(None, comp_zip)
        _unpack(comp_zip, files, f"COMP_ZIP={comp_zip}")
    elif comp.source == "demo":
        import importlib  # only a demo needs its generator

        if comp.name not in DEMOS:
            raise UserError(f"'{comp.name}': `source: demo` is for the built-in demos ({', '.join(DEMOS)}); use kaggle or local")
        origin = {"source": "demo", "fingerprint": None}
        files.mkdir()
        importlib.import_module(f"medalist.demos.{DEMOS[comp.name]}").write_demo(files)
    else:
        archive = stage / f"{comp.slug}.zip"
        code_competition = _download_kaggle(comp, archive, backoff_base)
        origin = {"source": f"kaggle:{comp.slug}", "fingerprint": None, "code_competition": code_competition}
        _unpack(archive, files, f"Kaggle's download for '{comp.slug}'")
    return origin


def _origin_of(comp_dir: Path | None, comp_zip: Path | None, content: bool = True) -> dict:
    """A COMP_DIR / COMP_ZIP as the stamp records it: absolute path, a fingerprint of its files'
    names, sizes and modification times (an unchanged source is recognised without reading it) and
    the hash of their contents (a source copied again, same bytes with new times, is still the same)."""
    path = Path(comp_dir or comp_zip).resolve()
    what = "COMP_DIR" if comp_dir is not None else "COMP_ZIP"
    h = hashlib.sha256()
    for rel, p in _source_files(path):
        st = p.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    origin = {"source": f"{what}={path}", "fingerprint": h.hexdigest()}
    return {**origin, "content": _content_hash(path)} if content else origin


def _source_files(path: Path) -> list[tuple[str, Path]]:
    if path.is_dir():
        return [(str(p.relative_to(path)), p) for p in sorted(path.rglob("*")) if p.is_file()]
    return [("", path)] if path.is_file() else []


def _content_hash(path: Path) -> str:
    h = hashlib.sha256()
    for rel, p in _source_files(path):
        h.update(f"{rel}\0{p.stat().st_size}\n".encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _same_files(src: Path, raw: Path) -> bool:
    """A stamp from before contents were hashed: the COMP_DIR still holds, byte for byte, the files
    that were copied into data/raw (a folder of zips was unpacked there, so it cannot tell)."""
    import filecmp

    files = _source_files(src) if src.is_dir() else []
    return bool(files) and all((raw / rel).is_file() and filecmp.cmp(p, raw / rel, shallow=False)
                               for rel, p in files)


def _check_same_source(raw: Path, comp_dir: Path | None, comp_zip: Path | None) -> None:
    """Data stamped from one COMP_DIR / COMP_ZIP is not silently kept when the user names another."""
    if comp_dir is None and comp_zip is None:
        return
    want = _origin_of(comp_dir, comp_zip, content=False)  # contents are read only when the times differ
    have = _stamped(raw)
    if have.get("source") == want["source"] and (
            have.get("fingerprint") == want["fingerprint"]
            or ("content" in have and have["content"] == _origin_of(comp_dir, comp_zip)["content"])
            or ("content" not in have and comp_dir is not None and _same_files(Path(comp_dir).resolve(), raw))):
        return
    shown = raw.relative_to(C.root())
    asked = want["source"]
    if have.get("source") == asked:
        why = f"{asked} changed since {shown} was made from it on {have.get('time', '?')}"
    else:
        why = f"{shown} holds the files from {have.get('source', 'an unknown source')}, not from {asked}"
    raise UserError(f"{why}: `rm -rf {shown}` and rerun to use {asked}, or leave {asked.split('=')[0]} out to keep them")


def _stamped(raw: Path) -> dict:
    try:
        return json.loads((raw / STAMP).read_text(encoding="utf-8"))
    except ValueError:
        return {}


def _check_via(comp: Competition, code_competition: bool | None) -> None:
    """The config's `submission.via` against what Kaggle said of the competition (None: not known)."""
    where = f"configs/competitions/{comp.name}.yaml"
    if code_competition and comp.submission.via == "csv":
        raise UserError(f"Kaggle takes only notebook submissions for '{comp.slug}' (a code competition), but {where} "
                        "has submission.via: csv: set `via: notebook` under `submission:` there (`make bundle` "
                        "then packs the notebook `make submit` pushes)")
    if code_competition is False and comp.submission.via == "notebook":
        print(f"warning: Kaggle takes CSV submissions for '{comp.slug}', and {where} has submission.via: notebook: "
              "`make submit` will push a notebook and submit its output; set via: csv to upload the CSV itself",
              file=sys.stderr)


def _check_files(comp: Competition, files: Path, origin: dict) -> None:
    """The tables the config names are there (a folder layout has no train.csv or test.csv)."""
    f, image = comp.files, comp.inputs.image
    wanted = [name for name, table in ((f.train, image is None or image.train_layout == "table"),
                                       (f.test, image is None or image.test_layout == "table"),
                                       (f.sample_submission, True)) if table]
    missing = [name for name in wanted if not (files / name).is_file()]
    if missing:
        has = sorted(p.name for p in files.iterdir()) if files.is_dir() else []
        raise UserError(
            f"{origin['source']} has no {', '.join(missing)} (it has: {', '.join(has) or 'nothing'}); "
            f"fix `files:` in configs/competitions/{comp.name}.yaml"
        )


@contextlib.contextmanager
def _named_as_given(files: Path, comp: Competition, comp_dir: Path | None, comp_zip: Path | None):
    """A message about a file of the download names it as the user knows it — the file in their
    COMP_DIR, or `<zip>:<member>` — not by the temp folder it passes through on its way in."""
    if comp_dir is not None:
        given = f"{Path(comp_dir).resolve()}/"
    elif comp_zip is not None:
        given = f"{Path(comp_zip).resolve()}:"
    elif comp.source == "demo":
        given = f"the {comp.name} demo:"
    else:
        given = f"{comp.slug}.zip:"  # what Kaggle's download is called
    try:
        yield
    except UserError as e:
        msg = str(e)
        for temp in (str(files), str(files.relative_to(C.root()))):
            msg = msg.replace(f"{temp}/", given).replace(temp, given.rstrip("/:"))
        raise UserError(msg) from None


@contextlib.contextmanager
def _refused(comp: Competition, origin: dict):
    """A data error found here names the source and says that nothing was stored."""
    where = origin["source"]
    if where.startswith("kaggle:"):
        fix = f"fix configs/competitions/{comp.name}.yaml"
    else:
        fix = f"fix the files or configs/competitions/{comp.name}.yaml, then rerun `make download`"
    try:
        yield
    except UserError as e:
        raise UserError(f"{where} was not stored: {e}; {fix}") from None


def _validate(comp: Competition, files: Path, origin: dict) -> None:
    """Refuse what `make folds` would refuse, before anything is stamped."""
    with _refused(comp, origin):
        read_raw(comp, files)


def _fetch_url_images(comp: Competition, files: Path, cache: Path, origin: dict) -> None:
    """Every image of the URL column into files/<urls.dir>/ and each row's outcome into
    files/download_report.csv; refused (one line, the report kept beside `cache`) when more than
    `urls.max_missing` of the rows have no image."""
    urls = comp.inputs.image.urls
    with _refused(comp, origin):  # the tables are checked before a single image is fetched
        rows = image_urls(comp, files)
    rows["url"] = rows["url"].fillna("").astype(str).str.strip()
    outcome = fetch_images([u for u in rows["url"] if u], cache, urls)
    got = [outcome[u] if u else Fetched("bad_url", "no URL") for u in rows["url"]]
    report = rows[["url", "id", "split"]].assign(status=["ok" if o.ok else o.status for o in got],
                                                  reason=["" if o.ok else o.reason for o in got])
    write_csv(cache / REPORT, report)  # where the user finds it if the download is refused below
    missing = report[report["status"] != "ok"]
    now, kept = (sum(o.status == s for o in outcome.values()) for s in ("ok", "kept"))
    print(f"images: {now} fetched, {kept} from an earlier run; {len(missing)} of {len(report)} rows have none")
    share = len(missing) / len(report)
    if share > urls.max_missing:
        first = missing.iloc[0]
        raise UserError(
            f"{len(missing)} of {len(report)} rows ({share:.1%}) have no image, more than inputs.image.urls."
            f"max_missing ({urls.max_missing:.1%}), e.g. {first['url'] or first['split'] + ' id ' + first['id']}: "
            f"{first['status']} {first['reason']}; every row's outcome is in {(cache / REPORT).relative_to(C.root())}. "
            "A rerun fetches only the missing ones; raise max_missing to go on without them"
        )
    dst = files / urls.dir
    dst.mkdir(parents=True, exist_ok=True)
    for o in outcome.values():
        if o.ok and not (dst / o.file).exists():
            try:  # a hard link: no second copy of a large image set on disk
                os.link(cache / o.file, dst / o.file)
            except OSError:
                shutil.copy2(cache / o.file, dst / o.file)
    write_csv(files / REPORT, report)


@dataclasses.dataclass
class _Budget:
    """What one download may unpack, all nesting levels together: the unzip limits apply to the
    sum, against the size of what was downloaded (`packed`)."""

    packed: int
    unpacked: int = 0


def _unpack(archive: Path, dst: Path, what: str) -> None:
    """Unzip the download into `dst`, then the zips it holds."""
    if not archive.is_file():
        raise UserError(f"{what}: file not found")
    budget = _Budget(packed=archive.stat().st_size)
    _unzip(archive, dst, what, budget)
    _unpack_nested(dst, what, budget)


def _zips_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".zip"
                  and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts))


def _unpack_nested(files: Path, what: str, budget: _Budget) -> None:
    """Zips inside the download unpacked where they lie, then removed, until none is left. A zip
    of one folder or one file unpacks beside itself (train.zip holding train/…, train.csv.zip);
    a zip of loose files into a folder named after it (train.zip holding 1.jpg … → train/)."""
    for _ in range(MAX_NESTING):
        inner = _zips_in(files)
        if not inner:
            return
        for z in inner:
            shown = f"{what}: {z.relative_to(files)}"
            try:
                with zipfile.ZipFile(z) as zf:
                    names = [n for n in zf.namelist() if not n.startswith("__MACOSX/")]
            except zipfile.BadZipFile as e:
                raise UserError(f"{shown}: not a zip file ({e})") from None
            tops = {n.split("/")[0] for n in names}
            beside = len(tops) == 1 and (len(names) == 1 or any("/" in n for n in names))
            _unzip(z, z.parent if beside else z.parent / z.stem, shown, budget)
            z.unlink()
    if _zips_in(files):
        raise UserError(f"{what}: zips nested more than {MAX_NESTING} deep; unpack it yourself and pass COMP_DIR")


def _unzip(archive: Path, dst: Path, what: str, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_unzip_size(zf, budget, dst.parent, what)
            # extractall drops absolute paths and '..' parts, and writes no more than each
            # member's declared size, so the check above bounds what lands on disk
            zf.extractall(dst)
    except zipfile.BadZipFile as e:
        raise UserError(f"{what}: not a zip file ({e})") from None


def _check_unzip_size(zf: zipfile.ZipFile, budget: _Budget, where: Path, what: str) -> None:
    max_gb, max_ratio = (_limit(name) for name in UNZIP_LIMITS)
    total = budget.unpacked + sum(i.file_size for i in zf.infolist())
    ratio = total / max(budget.packed, 1)
    if total > max_gb * GIB:
        raise UserError(
            f"{what}: unpacks to {total / GIB:.2f} GiB, over the {max_gb:g} GiB limit "
            "(MEDALIST_UNZIP_MAX_GB=… raises it)"
        )
    if ratio > max_ratio:
        raise UserError(
            f"{what}: unpacks to {total / GIB:.2f} GiB from {budget.packed / (1 << 20):.2f} MiB, {ratio:.0f} times "
            f"its size, over the {max_ratio:g}x limit — a zip bomb? (MEDALIST_UNZIP_MAX_RATIO=… raises it)"
        )
    free = shutil.disk_usage(where).free
    if total - budget.unpacked > free:
        raise UserError(f"{what}: unpacks to {(total - budget.unpacked) / GIB:.2f} GiB, only {free / GIB:.2f} GiB "
                        "free on the disk of data/raw/")
    budget.unpacked = total


def _limit(name: str) -> float:
    text = os.environ.get(name, "")
    if not text:
        return UNZIP_LIMITS[name]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{name}={text}: must be a positive number")
    return value


def _download_kaggle(comp: Competition, archive: Path, backoff_base: float) -> bool:
    """Kaggle's zip of the competition into `archive`; whether it is a code competition."""

    def fetch() -> None:
        request = ApiDownloadDataFilesRequest()
        request.competition_name = comp.slug
        # The SDK follows Kaggle's redirect and hands back the streamed file response.
        response = api.competitions.download_data_files(request)
        total = int(response.headers.get("Content-Length") or 0) or None
        with response, archive.open("wb") as out, progress(
            total=total, unit="B", unit_scale=True, desc=f"download {comp.slug}"
        ) as bar:
            for chunk in response.iter_content(chunk_size=1 << 20):
                out.write(chunk)
                bar.update(len(chunk))

    with Api(comp, backoff_base) as api:
        request = ApiGetCompetitionRequest()
        request.competition_name = comp.slug
        competition = api.call("competition lookup", lambda: api.competitions.get_competition(request))
        code_competition = bool(competition.is_kernels_submissions_only)
        _check_via(comp, code_competition)  # before a download that the config would make useless
        api.call("download", fetch)
    return code_competition


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
