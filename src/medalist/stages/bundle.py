"""`make bundle`: the trained ensemble as three folders Kaggle's client uploads as they are — what a
code competition's notebook needs to predict a hidden test with the internet off.

Reads   results/<comp>/ensemble/ (model.joblib, metrics.json, exact_match.csv), each used run's
        config.yaml, fold<k>/ weights and tta/metrics.json, requirements.txt, the checkout
Writes  submission/<comp>/bundle/ — code/ (a medalist wheel and the pinned dependencies'
        wheels, flat; nltk_data/ where synonym views read WordNet), artifacts/ (bundle.json,
        runs/<run>/…, ensemble/…), kernel/ (medalist_kernel.py, kernel-metadata.json), each with
        its Kaggle metadata; sizes.md. Built beside, then swapped in whole: a failed bundle leaves
        the previous one as it was.
Run     python -m medalist.stages.bundle --comp demo [--torch]

Only what the ensemble reads goes in: runs of weight 0, each run's predictions, checkpoints and
optimiser states stay out. A run that saw the public test (pseudo-labels, in-domain pretraining on
test texts) is refused — the hidden test is another one — unless submission.notebook says
allow_test_fitted. Before the bundle is swapped in, the inference path (`medalist.bundle.infer`)
predicts the public test from the artifacts and must agree with submission/<comp>/submission.csv.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medalist.bundle import digest, kernel
from medalist.core import config as C
from medalist.core.competition import Competition, load_competition
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import read_csv, read_json, write_json, write_text

LEFT_OUT = ("val.csv", "test.csv", "oof.csv", "done.json")  # predictions and bookkeeping, not weights
LEFT_OUT_DIRS = ("ckpt", "tta", "__pycache__")
LEFT_OUT_PREFIXES = ("optimizer", "scheduler", "rng_state", "events.out.tfevents", "trainer_state")


def owner() -> str:
    """The Kaggle username the datasets and kernel go under: KAGGLE_USERNAME, the credentials',
    or a placeholder that `make submit` replaces."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    from medalist.clients.kaggle import credentials

    try:
        return credentials().username or kernel.PLACEHOLDER_OWNER
    except UserError:
        return kernel.PLACEHOLDER_OWNER


def prefix(comp: Competition) -> str:
    return comp.submission.notebook.dataset_prefix or f"medalist-{comp.name}".lower().replace("_", "-")[:40]


def python_version(comp: Competition, full: bool = False) -> str:
    """The notebook image's CPython, major.minor (or the whole version pip checks Requires-Python
    against: the one configured, else this machine's where the minor versions agree)."""
    want = comp.submission.notebook.python or platform.python_version()
    minor = ".".join(want.split(".")[:2])
    if not full:
        return minor
    return want if want.count(".") == 2 else (platform.python_version()
                                              if platform.python_version().startswith(minor + ".") else minor)


def used_runs(ens_dir: Path) -> tuple[list[str], dict]:
    """(runs the blend reads, the ensemble's saved model): a weight of 0 leaves a run out, except
    for stacking, whose level-2 model reads every run."""
    import joblib

    path = ens_dir / "model.joblib"
    if not path.exists():
        raise UserError(f"no fitted ensemble in {ens_dir}: run `make all` (or `make ensemble`) first")
    ens = joblib.load(path)
    weights = np.asarray(ens["model"]["params"]["weights"], dtype=float)
    if ens["model"]["method"] == "stack":
        return list(ens["runs"]), ens
    return [r for r, w in zip(ens["runs"], weights) if w > 0], ens


def check_run(comp: Competition, paths: Paths, run: str) -> list[int]:
    """The run's fold ids; one line if it is unfinished or was fitted on the public test."""
    run_dir = paths.run(run)
    folds = list(range(comp.folds.n))
    missing = [k for k in folds if not (run_dir / f"fold{k}" / "done.json").exists()]
    if missing or not (run_dir / "metrics.json").exists():
        raise UserError(f"run '{run}' is trained on some folds only (missing fold{missing[0] if missing else '?'}): "
                        f"finish it with `make train MODELS={run}` before bundling")
    if comp.submission.notebook.allow_test_fitted:
        return folds
    resolved = C.load_yaml(run_dir / "config.yaml")
    if "pseudo" in (resolved.get("generated") or {}).get("sources", []):
        raise UserError(f"run '{run}' trained on pseudo-labels of the public test, which the hidden test replaces: "
                        f"leave it out of MODELS, or set submission.notebook.allow_test_fitted: true")
    from medalist.models.backbones import pretrained_name

    for key in ("backbone", "text_backbone"):
        name = pretrained_name(str(resolved["model"].get(key) or ""))
        done = paths.results / "pretrain" / name / "done.json" if name else None
        if done is not None and done.exists() and read_json(done).get("pretrain_on_test"):
            raise UserError(f"run '{run}' continues a backbone pretrained on the public test's texts (pretrain:{name}): "
                            f"leave it out, or set submission.notebook.allow_test_fitted: true")
    return folds


def _copy_run(run_dir: Path, dest: Path, folds: list[int]) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in LEFT_OUT or n in LEFT_OUT_DIRS or n.startswith(LEFT_OUT_PREFIXES)}

    dest.mkdir(parents=True)
    shutil.copy2(run_dir / "config.yaml", dest / "config.yaml")
    for k in folds:
        shutil.copytree(run_dir / f"fold{k}", dest / f"fold{k}", ignore=ignore)
    pretrain = run_dir / "pretrain"  # the autoencoder's encoder lives beside the folds
    if pretrain.is_dir():
        shutil.copytree(pretrain, dest / "pretrain", ignore=ignore)
        if (pretrain / "done.json").exists():
            shutil.copy2(pretrain / "done.json", dest / "pretrain" / "done.json")


def _tta_of(run_dir: Path, use_tta: bool) -> dict:
    if not use_tta:
        return {}
    m = read_json(run_dir / "tta" / "metrics.json")
    views = m["views"][1:] if m.get("use_tta") else []
    return {"tta_views": views, "tta_config": m["config"]} if views else {}


def artifacts(comp: Competition, paths: Paths, dest: Path) -> dict:
    """Fill artifacts/ and return its bundle.json (without the content hash)."""
    ens_dir = paths.results / "ensemble"
    runs, ens = used_runs(ens_dir)
    metrics = read_json(ens_dir / "metrics.json")
    if sorted(metrics["runs"]) != sorted(ens["runs"]):
        raise UserError(f"{ens_dir}: model.joblib and metrics.json name different runs: rerun `make ensemble`")
    info = {}
    for r in runs:
        folds = check_run(comp, paths, r)
        _copy_run(paths.run(r), dest / "runs" / r, folds)
        info[r] = {"folds": folds, **_tta_of(paths.run(r), ens["use_tta"])}
    (dest / "ensemble").mkdir(parents=True)
    shutil.copy2(ens_dir / "model.joblib", dest / "ensemble" / "model.joblib")
    if (ens_dir / "exact_match.csv").exists():
        shutil.copy2(ens_dir / "exact_match.csv", dest / "ensemble" / "exact_match.csv")
    public = len(read_csv(paths.raw / comp.files.sample_submission, comp.files.sample_submission, dtype=str))
    return {
        "format": 1, "comp": comp.name, "slug": comp.slug, "competition": C.to_dict(comp),
        "runs": info, "ensemble": {"runs": ens["runs"], "method": metrics["method"], "use_tta": ens["use_tta"],
                                   "left_out": [r for r in ens["runs"] if r not in info]},
        "cv": metrics["oof_score"], "metric": comp.metric, "public_rows": public,
        "python": python_version(comp), "git_sha": C.git_sha(),
    }


def _needs_wordnet(manifest: dict) -> bool:
    return any("nlpaug" in r.get("tta_views", []) and any(a["name"] == "synonym" for a in r["tta_config"]["augmenters"])
               for r in manifest["runs"].values())


def code(comp: Competition, dest: Path, manifest: dict, include_torch: bool) -> list[Path]:
    from medalist.bundle import wheels

    dest.mkdir(parents=True, exist_ok=True)
    house = os.environ.get("MEDALIST_WHEELHOUSE")
    pins = wheels.plan(C.root() / "requirements.txt", include_torch=include_torch)
    got = wheels.fetch(dest, pins, python_version(comp, full=True), wheelhouse=Path(house) if house else None)
    got.append(wheels.build_medalist_wheel(dest))
    if not include_torch:
        wheels.check_wheels(dest)
    if _needs_wordnet(manifest):
        from medalist.text import augmenters

        nltk = C.root() / "data" / "nltk_data"
        if not augmenters.ensure_wordnet(nltk):
            raise UserError("a TTA view reads WordNet synonyms but WordNet is not installed here "
                            "(apt-get install wordnet-base wordnet-sense-index)")
        shutil.copytree(nltk, dest / "nltk_data")
    return got


def sizes(bundle: Path) -> str:
    def mb(p: Path) -> float:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20 if p.is_dir() else p.stat().st_size / 2**20

    rows = [("code/ (wheels)", mb(bundle / "code"))]
    rows += [(f"artifacts/runs/{r.name}", mb(r)) for r in sorted((bundle / "artifacts" / "runs").iterdir())]
    rows += [("artifacts/ensemble", mb(bundle / "artifacts" / "ensemble"))]
    total = mb(bundle / "code") + mb(bundle / "artifacts")
    lines = ["| part | MB |", "|---|---:|", *(f"| {n} | {v:.1f} |" for n, v in rows), f"| **total** | {total:.1f} |"]
    return "\n".join(lines) + "\n"


def _cap(bundle: Path, cap_mb: float, what: str) -> str:
    """The size table; over the cap it is printed and the bundle stops with one line."""
    (bundle / "code").mkdir(exist_ok=True)
    table = sizes(bundle)
    total = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20
    if total > cap_mb:
        print(table, end="")
        raise UserError(f"{what} holds {total:.1f} MB, over submission.notebook.max_bundle_mb ({cap_mb:g}): "
                        "leave a member out of MODELS or raise the cap")
    return table


def agree(comp: Competition, paths: Paths, artifacts_dir: Path, work: Path) -> str:
    """Predict the public test through the inference path; it must give submission.csv."""
    from medalist.bundle import infer

    out = infer.predict(paths.raw, artifacts_dir, work / "submission.csv")
    return compare(comp, read_csv(paths.submission / "submission.csv", "submission.csv", dtype=str),
                   read_csv(out, out.name, dtype=str), "the inference path on the public test")


def compare(comp: Competition, want, got, what: str, tol: float = 1e-4) -> str:
    """One line: equal (labels; probabilities within tol), or the first differing id."""
    s = comp.submission
    if list(want.columns) != list(got.columns) or len(want) != len(got):
        raise UserError(f"{what}: {len(got)} rows × {list(got.columns)}, expected {len(want)} rows × {list(want.columns)}")
    ids_w, ids_g = want[s.id_column].astype(str).to_numpy(), got[s.id_column].astype(str).to_numpy()
    if (ids_w != ids_g).any():
        i = int(np.flatnonzero(ids_w != ids_g)[0])
        raise UserError(f"{what}: row {i + 2} has id '{ids_g[i]}', expected '{ids_w[i]}'")
    if s.format == "probs":
        a, b = want[list(comp.labels)].to_numpy(float), got[list(comp.labels)].to_numpy(float)
        bad = np.flatnonzero(np.abs(a - b).max(axis=1) > tol)
        worst = float(np.abs(a - b).max()) if len(a) else 0.0
        if len(bad):
            raise UserError(f"{what}: id '{ids_w[bad[0]]}' differs (probabilities by up to {worst:.2g} > {tol})")
        return f"{len(got)} rows agree (probabilities within {worst:.1g})"
    a, b = want[s.label_column].astype(str).to_numpy(), got[s.label_column].astype(str).to_numpy()
    if (a != b).any():
        i = int(np.flatnonzero(a != b)[0])
        raise UserError(f"{what}: id '{ids_w[i]}' gets '{b[i]}', submission.csv has '{a[i]}' "
                        f"({int((a != b).sum())} of {len(a)} rows differ)")
    return f"{len(got)} rows agree (same labels)"


def run(comp_name: str, include_torch: bool = False) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    nb = comp.submission.notebook
    if comp.submission.via != "notebook":
        print(f"note: {comp.name} submits a CSV (submission.via: csv); this bundle is what a notebook would need")
    if not (paths.submission / "submission.csv").exists():
        raise UserError(f"no {paths.submission / 'submission.csv'}: run `make all COMP={comp.name}` first")
    final = paths.submission / "bundle"
    paths.submission.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=paths.submission))
    try:
        manifest = artifacts(comp, paths, tmp / "artifacts")
        _cap(tmp, nb.max_bundle_mb, "its artifacts alone")  # before fetching any wheel
        code(comp, tmp / "code", manifest, include_torch)
        manifest["content_hash"] = digest.bundle_hash(tmp / "code", tmp / "artifacts")
        table = _cap(tmp, nb.max_bundle_mb, "the bundle")
        write_json(tmp / "artifacts" / "bundle.json", manifest)
        with tempfile.TemporaryDirectory(dir=paths.submission) as work:
            verdict = agree(comp, paths, tmp / "artifacts", Path(work))
        who, pre = owner(), prefix(comp)
        title = f"medalist {comp.name}"
        write_json(tmp / "code" / "dataset-metadata.json", kernel.dataset_metadata(who, f"{pre}-code", f"{title} code"))
        write_json(tmp / "artifacts" / "dataset-metadata.json",
                   kernel.dataset_metadata(who, f"{pre}-artifacts", f"{title} artifacts"))
        settings = {"code": f"{pre}-code", "artifacts": f"{pre}-artifacts", "competition": comp.slug,
                    "sample_submission": comp.files.sample_submission, "content_hash": manifest["content_hash"]}
        write_text(tmp / "kernel" / kernel.CODE_FILE, kernel.script(settings))
        write_json(tmp / "kernel" / "kernel-metadata.json",
                   kernel.metadata(who, pre, f"{title} inference", comp.slug, nb.accelerator))
        write_text(tmp / "sizes.md", table)
        for keep in (".submit_state.json",):  # `make submit`'s progress outlives a rebuilt bundle
            if (final / keep).exists():
                shutil.copy2(final / keep, tmp / keep)
        old = final.with_name(".bundle-old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        # the make target, touched last: the swap keeps the build's times
        os.utime(final / "artifacts" / "bundle.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table, end="")
    print(f"bundle {manifest['content_hash'][:12]}: {len(manifest['runs'])} run(s) "
          f"({', '.join(manifest['runs'])}), CV {comp.metric} {manifest['cv']:.4f}; {verdict}; → {final.relative_to(C.root())}")
    if who == kernel.PLACEHOLDER_OWNER:
        print("note: no Kaggle username (KAGGLE_USERNAME or credentials): `make submit` fills it in")
    return final


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.bundle", __doc__)
    ap.add_argument("--torch", action="store_true", help="bundle torch and torchvision too (BUNDLE_TORCH=1)")
    a = ap.parse_args(argv)
    run(a.comp, a.torch)


if __name__ == "__main__":
    main()
