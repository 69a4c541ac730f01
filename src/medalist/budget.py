"""`make all BUDGET=45m`: the best ensemble this machine can train before the deadline.

The clock starts with make (MEDALIST_MAKE_START). In order:
1. the data stages (`make download check folds`), as always;
2. the candidates: MODELS given by hand, in their order; else the PRESET's list for this machine
   (`medalist.presets`), then configs/presets.yaml's cheaper `budget.extras`;
3. each candidate's cost on this machine: nothing for a run whose folds are finished under its
   current config; else its folds' measured seconds where any finished (`done.json`); else a timed
   probe (`probe`: fold-0 fits on slices of its rows, at most 4% of the budget a model), cached in .make/speed/<machine>.json per config
   hash (which covers the config, the data and the family's code) and replaced by measured
   seconds as folds finish. Probes run inside the budget;
4. the choice, best expected score first: each candidate in order, at its own config or else at
   the first of its `budget.smaller` configs that fits what is left (less a reserve for the
   ensemble and the report and `budget.reserve` of the budget), else left out. A run trained on
   pretraining or pseudo-labels is costed only when it is already finished (left out otherwise:
   its upstream cost is not estimated yet);
5. training, cheapest first, one `make train` per run. Each run has a deadline: what is left less
   the estimates of the runs queued after it. Its folds are watched; when the folds finished so far
   project past the deadline, or the deadline passes, the run is stopped and then restarted at a
   smaller config that fits, or left out. Every fold of a run keeps one config, and a stopped run's
   finished folds stay on disk (a later `make train` reuses them) but never enter the ensemble;
6. TTA where all chosen runs' TTA fits what is left; then `make all` on the runs that finished
   (evaluate, ensemble, report), with results/<comp>/budget.json and budget.md saying what the
   budget bought and what it left out (the report shows them).
Progress lines give the time left of the whole plan, its estimates scaled by how the finished work
compared with its own.

Run     python -m medalist.budget --comp demo --budget 10m [--preset good] [--models "…"]
        python -m medalist.budget probe --comp demo --models "tfidf embed" --out probe.json
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from medalist.core import config as C
from medalist.core.config import Paths, UserError

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
PROBE_MIN_ROWS = 48  # slice A's training rows at least (and six optimizer steps an epoch)
DEFAULT_JOB_OVERHEAD_S = 8.0  # a fold job's own cost beyond its fit (two Python start-ups, reading the
# tables, writing predictions), until a run trained here measures it
MERGE_S = 6.0  # a run's merge (`train --merge`) and make's own start-up


def parse_duration(text: str) -> float:
    """'45m', '3h', '1h30m', '90s', '2.5h' → seconds; anything else is one clear error."""
    t = "".join(str(text).split()).lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not t or "".join(n + u for n, u in parts) != t:
        raise UserError(f"BUDGET must be a duration like 45m, 3h, 1h30m or 900s, not '{text}'")
    seconds = sum(float(n) * UNITS[u] for n, u in parts)
    if seconds < 60:
        raise UserError(f"BUDGET={text} is under a minute: the data stages alone take longer")
    return seconds


def fmt(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


# ---------------------------------------------------------------- speed store


def machine_key() -> str:
    """Which machine measured a speed: its description and CPU model (MEDALIST_HARDWARE included)."""
    from medalist.core.hardware import describe

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return hashlib.sha256(f"{describe().summary()}|{cpu}".encode()).hexdigest()[:12]


def store_path() -> Path:
    return C.root() / ".make" / "speed" / f"{machine_key()}.json"


def load_store() -> dict:
    p = store_path()
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    except ValueError:
        return {}  # a torn file: measured again


def save_store(store: dict) -> None:
    from medalist.core.io import write_json

    write_json(store_path(), store)


# ---------------------------------------------------------------- probe (its own process)


class _Timeout(Exception):
    pass


def _stratified_order(df, seed: int = 0):
    """Rows shuffled, then interleaved by label, so any head of them holds every class in proportion."""
    sh = df.sample(frac=1.0, random_state=seed)
    if "label" not in sh.columns:
        return sh
    g = sh.groupby("label", sort=False)
    return sh.assign(_o=g.cumcount() / g["label"].transform("size")).sort_values("_o", kind="stable").drop(columns="_o")


def probe(comp_name: str, models: list[str], cap_s: float, shared: tuple[str, ...] = (), shared_cap_s: float = 0.0) -> list[dict]:
    """Each model's fold 0, fitted on slices of its rows (training, validation and test alike),
    extrapolated to the whole fold. Slice A is small (48 rows, or six optimizer steps an epoch). A
    neural engine is costed from A's steady pace — the median optimizer step after the first two,
    times the fold's steps — plus its set-up and its prediction rate. Any other family fits slice B,
    a quarter of the rows, and is costed as B scaled to the fold plus what A paid beyond its rows
    (imports, loading a backbone: every fold job pays them). All within cap_s: a fit stopped there
    gives a lower bound. A family in `shared` computes features for the whole competition on its
    first fit and caches them by content (image_embed, fusion_embed): its slice A may take
    shared_cap_s — that work is the run's own, done once — and its folds cost slice B scaled."""
    from medalist.core.competition import load_competition
    from medalist.core.io import read_processed
    from medalist.stages.train import resolve_run

    t_start = time.time()
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    train, test = read_processed(paths)
    out: list[dict] = [{"overhead_s": _process_age()}]
    for model in models:
        rec: dict = {"model": model}
        try:
            mod, cfg, _, cols, _, _, cfg_hash = resolve_run(comp, paths, model, False, (), train, test)
        except UserError as e:
            out.append({**rec, "error": str(e)})
            continue
        rec["cfg_hash"] = cfg_hash
        tr_all = train[train["fold"] != 0]
        if cfg.max_train_rows and len(tr_all) > cfg.max_train_rows:
            tr_all = tr_all.sample(n=cfg.max_train_rows, random_state=cfg.seed)
        va_all, n = train[train["fold"] == 0], len(tr_all)
        seed = int(time.time() * 1000) % 2**31  # other rows than the last probe's: no cache answers for them
        tr, va, te = (_stratified_order(d, seed) for d in (tr_all, va_all, test))
        rec["seed"] = seed
        trained = hasattr(cfg, "epochs")  # a neural engine's config (an embedding family's batch_size is not steps)
        batch = int(getattr(cfg, "batch_size", 0) or 0) * int(getattr(cfg, "grad_accum", 1) or 1) if trained else 0
        w = min(max(PROBE_MIN_ROWS, 6 * batch) / n, 0.25)  # slice A: six optimizer steps an epoch at least
        t0, used = time.time(), 0.0
        once_shared = getattr(cfg, "family", "") in shared
        try:
            t_a, info_a, steps = _fit_slice(mod, cfg, comp, cols, paths, (tr, va, te), 0.0, w,
                                            max(cap_s, shared_cap_s) if once_shared else cap_s)
        except _Timeout as e:
            t_a, info_a, steps = None, None, e.args[0] if e.args else []
        used = time.time() - t0
        rec.update(fractions=[w], slice_s=[t_a], shared=once_shared)
        if once_shared:  # the features are cached now: slice B sees what each fold job will
            used = 0.0
        if len(steps) >= 4:  # a neural engine: its steady pace (the median step after the first two)
            s_step = _median([b - a for a, b in zip(steps[2:], steps[3:])] or [steps[-1] - steps[-2]])
            epochs = float(getattr(cfg, "epochs", 1) or 1)
            steps_full = math.ceil(n / max(1, batch)) * epochs * len(getattr(cfg, "seeds", None) or [0])
            rows_a = (max(8, round(w * len(va))), max(8, round(w * len(te))))
            if info_a is not None:
                pred_row = float(info_a.get("predict_seconds", 0.0)) / sum(rows_a)
                fixed = max(0.0, t_a - len(steps) * s_step - pred_row * (sum(rows_a) + epochs * rows_a[0]))
            else:  # stopped at the cap: a row predicted in a tenth of its training step (measured on MiniLM: 1/14), set-up until the first step
                pred_row, fixed = s_step / max(1, batch) / 10, steps[0] - t0
            rec.update(step_s=s_step, steps=steps_full, fixed_s=fixed, engine=True)
            rec["predict_s"] = pred_row * (len(va) + len(te))
            rec["fold_s"] = fixed + steps_full * s_step + rec["predict_s"] + pred_row * epochs * len(va)
        elif t_a is None:  # not even slice A within the cap: at least this much
            rec["fold_s"], rec["predict_s"], rec["lower_bound"] = cap_s / w, 0.0, True
        else:  # slice B, a quarter of the rows (or what is left of the cap): all scales with the rows from there
            f_b = max(0.25, 2 * w) if w + max(0.25, 2 * w) <= 1 else 1 - w
            try:
                t_b, info_b, _ = _fit_slice(mod, cfg, comp, cols, paths, (tr, va, te), w, f_b, max(1.0, cap_s - used))
                # what slice A paid beyond its rows: every fold job pays it (not the shared features: once)
                once = 0.0 if once_shared else max(0.0, t_a - t_b * w / f_b)
                rec.update(fractions=[w, f_b], slice_s=[t_a, t_b], fold_s=once + t_b / f_b,
                           predict_s=float(info_b.get("predict_seconds", 0.0)) / f_b)
            except _Timeout:
                rec.update(fractions=[w, f_b], fold_s=max(cap_s - used, 1.0) / f_b + t_a,
                           predict_s=float(info_a.get("predict_seconds", 0.0)) / w, lower_bound=True)
        out.append(rec)
    out.append({"probe_s": time.time() - t_start})
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _fit_slice(mod, cfg, comp, cols, paths, tables, lo: float, f: float, cap_s: float):
    """One fit of the family on the slice [lo, lo + f) of the (shuffled) training, validation and
    test rows, stopped by SIGALRM after cap_s: (seconds, info, optimizer step times). A stopped fit
    raises _Timeout carrying the step times seen."""
    import tempfile

    from medalist.models import FoldData

    part = [d.iloc[int(round(lo * len(d))): max(int(round(lo * len(d))) + 8, int(round((lo + f) * len(d))))]
            for d in tables]
    fold = FoldData(fold=0, n_classes=comp.n_classes, train=part[0][cols].reset_index(drop=True),
                    train_labels=part[0]["label"].to_numpy(), val=part[1][cols].reset_index(drop=True),
                    val_labels=part[1]["label"].to_numpy(), test=part[2][cols].reset_index(drop=True),
                    metric=comp.metric, log_dir=None, data_dir=paths.processed)
    steps: list[float] = []
    hook = None
    if "torch" in sys.modules:  # a torch family: the time of every optimizer step, for its steady pace
        from torch.optim.optimizer import register_optimizer_step_post_hook

        hook = register_optimizer_step_post_hook(lambda *a: steps.append(time.time()))
    (C.root() / ".make").mkdir(exist_ok=True)
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory(dir=C.root() / ".make") as tmp:
            signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, cap_s)
            try:
                res = mod.fit_fold(cfg, fold, Path(tmp))
            except _Timeout:
                raise _Timeout(list(steps)) from None
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        if hook is not None:
            hook.remove()
    return time.time() - t0, res.info, steps


def _raise_timeout(signum, frame):
    raise _Timeout()


def _process_age() -> float:
    """Seconds since this process started (imports included): a fold job's start-up cost."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - a missing figure falls back to the default
        return DEFAULT_JOB_OVERHEAD_S


# ---------------------------------------------------------------- the driver


@dataclasses.dataclass
class Run:
    name: str  # the run as MODELS names it (suffix included)
    wanted: str  # the candidate it stands for (its own name, or the larger config it replaces)
    origin: str  # preset, extra, given
    cfg_hash: str | None = None
    estimate_s: float | None = None
    tta_s: float = 0.0
    source: str = ""  # finished, measured, probe, probe (lower bound)
    decision: str = ""
    actual_s: float | None = None


class Driver:
    def __init__(self, comp: str, budget_text: str, preset: str, models_given: str, suffix: str, jobs: int,
                 tta: bool, out=sys.stdout):
        from medalist.core.competition import load_competition

        self.budget_s = parse_duration(budget_text)
        self.budget_text = budget_text
        self.comp = load_competition(comp)
        self.paths = Paths(self.comp.name)
        self.preset, self.models_given, self.suffix, self.jobs, self.tta = preset, models_given.split(), suffix, jobs, tta
        start = os.environ.get("MEDALIST_MAKE_START", "")
        self.t0 = float(start) if start.isdigit() else time.time()
        self.deadline = self.t0 + self.budget_s
        self.table = C.load_yaml(C.configs_dir() / "presets.yaml").get("budget") or {}
        self.reserve_s = float(self.table.get("reserve", 0.05)) * self.budget_s
        self.store = load_store()
        self.runs: list[Run] = []
        self.left: list[Run] = []
        self.out = out
        self.probe_s = 0.0
        self.ratio = 1.0  # actual / estimated, over the runs finished so far

    # -------------------------------------------------------- helpers
    def say(self, msg: str) -> None:
        print(f"[budget {fmt(time.time() - self.t0)}/{fmt(self.budget_s)}] {msg}", file=self.out, flush=True)

    def left_s(self) -> float:
        return self.deadline - time.time()

    def final_s(self, n_runs: int) -> float:
        """evaluate, ensemble and report: measured where a previous budget run recorded them."""
        per = self.store.get("_final", {}).get(self.comp.name)
        return 1.5 * (per if per else 40.0 + 12.0 * n_runs)

    def make(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        e = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        e.update(env or {})
        cmd = ["make", "--no-print-directory", f"-j{self.jobs}", *args, f"COMP={self.comp.name}", "BUDGET="]
        return subprocess.Popen(cmd, cwd=C.root(), env=e, start_new_session=True)

    def make_ok(self, *args: str) -> None:
        p = self.make(*args)
        if p.wait() != 0:
            raise UserError(f"make {' '.join(args)} failed (exit {p.returncode}): see above")

    # -------------------------------------------------------- candidates and costs
    def candidates(self) -> list[tuple[str, str]]:
        if self.models_given:
            return [(m if "+" in m else m + self.suffix, "given") for m in self.models_given]
        from medalist import presets
        from medalist.core.hardware import describe

        r = presets.resolve(self.comp, self.preset, describe(), C.configs_dir())
        for line in r.why:
            self.say(line)
        kind = presets.modality(self.comp)
        extras = (self.table.get("extras") or {}).get(kind, [])
        out = [(m if "+" in m else m + self.suffix, "preset") for m in r.models]
        out += [(m + self.suffix, "extra") for m in extras if m + self.suffix not in {n for n, _ in out}]
        return out

    def smaller(self, run: str) -> list[str]:
        base, sfx = run.split("+")[0], run[len(run.split("+")[0]):]
        chain, seen = [], {base}
        while (nxt := (self.table.get("smaller") or {}).get(base)) and nxt not in seen:
            chain.append(nxt + sfx)
            seen.add(nxt)
            base = nxt
        return chain

    def _hash(self, run: str) -> tuple[str | None, str]:
        """(config hash, why not) of a run, as its fold jobs will compute it."""
        from medalist.core.io import read_processed
        from medalist.stages.train import resolve_run

        base = run.split("+")[0]
        sfx = run[len(base):]
        try:
            cfg_path = C.configs_dir() / "models" / f"{base}.yaml"
            if not cfg_path.exists():
                return None, f"no configs/models/{base}.yaml"
            if "pseudo" in sfx or "pretrain:" in cfg_path.read_text(encoding="utf-8"):
                upstream = "pseudo-labels" if "pseudo" in sfx else "in-domain pretraining"
                h = self._finished_hash(run)
                return (h, "") if h else (None, f"trains on {upstream}, whose cost the budget does not estimate yet")
            train, test = self._tables
            use_gen = sfx == "+gen"
            gen = () if use_gen or not sfx else tuple(sfx[1:].split("+"))
            return resolve_run(self.comp, self.paths, base, use_gen, gen, train, test)[-1], ""
        except UserError as e:
            return None, str(e)

    def _finished_hash(self, run: str) -> str | None:
        m = self.paths.run(run) / "metrics.json"
        if not m.exists():
            return None
        from medalist.core.io import read_json

        hashes = {read_json(d).get("config_hash") for d in self.paths.run(run).glob("fold*/done.json")}
        return hashes.pop() if len(hashes) == 1 else None

    def folds_done(self, run: str, cfg_hash: str) -> list[float]:
        """Fit seconds of the folds of `run` finished under cfg_hash."""
        from medalist.core.io import read_json

        out = []
        for d in sorted(self.paths.run(run).glob("fold*/done.json")):
            try:
                j = read_json(d)
            except (OSError, ValueError):
                continue
            if j.get("config_hash") == cfg_hash:
                out.append(float(j.get("seconds", 0.0)))
        return out

    def cost(self, run: Run) -> None:
        """Fill run.estimate_s / tta_s / source from what is known (no probing here)."""
        n = self.comp.folds.n
        done = self.folds_done(run.name, run.cfg_hash)
        over = float(self.store.get("_overhead_s", DEFAULT_JOB_OVERHEAD_S))
        entry = self.store.get(run.cfg_hash)
        if done and len(done) >= n and (self.paths.run(run.name) / "metrics.json").exists():
            run.estimate_s, run.source = 0.0, "finished"
        elif done:
            fold_s = sum(done) / len(done)
            self.store[run.cfg_hash] = {**(entry or {}), "fold_s": fold_s, "source": "measured", "run": run.name}
            run.estimate_s, run.source = (n - len(done)) * (fold_s + over) + MERGE_S, "measured"
        elif entry:
            run.estimate_s = n * (entry["fold_s"] + over) + MERGE_S
            run.source = entry.get("source", "probe") + (", at least" if entry.get("lower_bound") else "")
        else:
            run.estimate_s = None
            return
        entry = self.store.get(run.cfg_hash) or {}
        predict = float(entry.get("predict_s", 0.0))
        run.tta_s = 0.0 if (self.paths.run(run.name) / "tta" / "metrics.json").exists() else 2.0 * n * predict + over

    def probe_missing(self, runs: list[Run]) -> None:
        todo = [r for r in runs if r.estimate_s is None and r.cfg_hash]
        if not todo:
            return
        cap = max(30.0, 0.04 * self.budget_s)
        models = [r.name.split("+")[0] for r in todo]
        self.say(f"probing {' '.join(models)} (fold-0 fits on slices of its rows; at most {fmt(cap)} a model)")
        t = time.time()
        e = {**os.environ, "PYTHONPATH": str(C.root() / "src")}
        log = self.paths.logs / "budget_probe.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        result = C.root() / ".make" / f"probe-{self.comp.name}.json"
        result.unlink(missing_ok=True)
        with open(log, "w", encoding="utf-8") as fh:
            rc = subprocess.run([sys.executable, "-m", "medalist.budget", "probe", "--comp", self.comp.name,
                                 "--models", " ".join(models), "--cap", str(cap), "--out", str(result),
                                 "--shared", " ".join(self.table.get("shared_features") or []),
                                 "--shared-cap", str(0.25 * self.budget_s)],
                                cwd=C.root(), env=e, stdout=fh, stderr=subprocess.STDOUT).returncode
        self.probe_s += time.time() - t
        if rc != 0 or not result.exists():
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise UserError(f"the budget's probe failed ({log.relative_to(C.root())}): {tail[0]}")
        recs = json.loads(result.read_text(encoding="utf-8"))
        for rec in recs:
            if "model" in rec:
                if rec.get("error"):
                    self.say(f"{rec['model']}: {rec['error']}")
                    continue
                self.store[rec["cfg_hash"]] = {"fold_s": rec["fold_s"], "predict_s": rec["predict_s"], "source": "probe",
                                               "lower_bound": bool(rec.get("lower_bound")), "model": rec["model"],
                                               "comp": self.comp.name, "slices_s": rec["slice_s"]}
        save_store(self.store)
        for r in todo:
            self.cost(r)
            if r.estimate_s is not None:
                self.say(f"{r.name}: about {fmt(r.estimate_s)} ({self.comp.folds.n} folds, {r.source})")

    # -------------------------------------------------------- the plan
    def choose(self) -> list[Run]:
        from medalist.core.io import read_processed

        self._tables = read_processed(self.paths)
        cands = [Run(name, name, origin) for name, origin in self.candidates()]
        for r in cands:
            r.cfg_hash, why = self._hash(r.name)
            if r.cfg_hash is None:
                r.decision = f"left out: {why}"
            else:
                self.cost(r)
        self.probe_missing(cands)
        chosen: list[Run] = []
        for r in cands:
            if r.cfg_hash is None:
                self.left.append(r)
                continue
            room = self.left_s() - self.reserve_s - self.final_s(len(chosen) + 1) - sum(c.estimate_s for c in chosen)
            pick = r if r.estimate_s is not None and r.estimate_s <= room else None
            if pick is None:
                pick = self.smaller_fit(r, r.name, chosen, lambda: self.left_s() - self.reserve_s - self.final_s(
                    len(chosen) + 1) - sum(c.estimate_s for c in chosen))
            if pick is None:
                r.decision = (f"left out: about {fmt(r.estimate_s)} ({r.source}), {fmt(max(0.0, room))} left"
                              if r.estimate_s is not None else "left out: not estimated")
                self.left.append(r)
                continue
            pick.decision = "planned" if pick is r else f"planned smaller, instead of {r.name} (about {fmt(r.estimate_s)})"
            chosen.append(pick)
        return chosen

    def smaller_fit(self, run: Run, wanted: str, taken: list[Run], room) -> Run | None:
        """The first of run's smaller configs (not already taken) whose cost fits room() — probed if
        need be, which takes time, so room is asked after."""
        for alt_name in self.smaller(run.name):
            if any(t.name == alt_name for t in taken):
                continue
            alt = Run(alt_name, wanted, run.origin)
            alt.cfg_hash, _ = self._hash(alt_name)
            if alt.cfg_hash is None:
                continue
            self.cost(alt)
            self.probe_missing([alt])
            if alt.estimate_s is not None and alt.estimate_s <= room():
                return alt
        return None

    def take_back(self, queue: list[Run]) -> None:
        """Runs left out for want of room, taken back (cheapest first) where the time the runs so far
        saved makes room for them now, at the pace so far."""
        for r in sorted((r for r in self.left if r.decision.startswith("left out: about") and r.estimate_s is not None),
                        key=lambda r: r.estimate_s):
            if any(q.name == r.name for q in (*self.runs, *queue)):
                continue
            room = self.left_s() - self.reserve_s - self.final_s(len(self.runs) + len(queue) + 1) - sum(
                q.estimate_s * self.ratio for q in queue)
            if r.estimate_s * self.ratio <= room:
                self.left.remove(r)
                r.decision = f"planned once earlier runs left room (about {fmt(r.estimate_s * self.ratio)} at the pace so far)"
                self.say(f"{r.name}: {r.decision}")
                queue.append(r)
                queue.sort(key=lambda q: q.estimate_s)

    def eta(self, queued: list[Run], current_left: float = 0.0) -> str:
        rest = current_left + sum(r.estimate_s for r in queued) * self.ratio + self.final_s(len(self.runs))
        return f"plan left {fmt(rest)}, ends at {fmt(time.time() - self.t0 + rest)} of {fmt(self.budget_s)}"

    # -------------------------------------------------------- training, watched
    def train(self, run: Run, queued: list[Run]) -> bool:
        """`make train` of one run, stopped when its deadline cannot hold. True: finished."""
        t_start = time.time()
        end = self.deadline - self.reserve_s - self.final_s(len(self.runs) + 1) - sum(q.estimate_s for q in queued)
        self.say(f"training {run.name} (about {fmt(run.estimate_s)}, {run.source}; must end within "
                 f"{fmt(end - t_start)}); {self.eta(queued, run.estimate_s)}")
        n = self.comp.folds.n
        before = len(self.folds_done(run.name, run.cfg_hash))
        p = self.make("train", f"MODELS={run.name}", "TTA=0")
        seen, stop = before, ""
        while p.poll() is None:
            time.sleep(2.0)
            now = time.time()
            done = self.folds_done(run.name, run.cfg_hash)
            if len(done) > seen:
                seen = len(done)
                per = (now - t_start) / max(1, seen - before)
                self.say(f"{run.name}: {seen}/{n} folds; {self.eta(queued, per * (n - seen))}")
            if now > end - 5.0:  # stopping takes a few seconds too
                stop = "its deadline passed"
            elif seen > before and now + (now - t_start) / (seen - before) * (n - seen) > end + (
                    0.15 * (end - t_start) if seen - before == 1 else 0.0):  # one fold's pace is a rough guide
                stop = f"{seen}/{n} folds in {fmt(now - t_start)}: the rest would end past its deadline"
            if stop:
                _kill(p)
                break
        run.actual_s = time.time() - t_start
        if not stop and p.returncode != 0:
            raise UserError(f"make train MODELS={run.name} failed (exit {p.returncode}): see above")
        if stop:
            run.decision = f"stopped after {fmt(run.actual_s)}: {stop}"
            self.say(f"{run.name}: {run.decision}")
            return False
        if run.estimate_s:
            self.ratio = max(0.5, min(3.0, (self.ratio + run.actual_s / run.estimate_s) / 2))
            self.say(f"{run.name}: finished in {fmt(run.actual_s)} against about {fmt(run.estimate_s)}")
        done = self.folds_done(run.name, run.cfg_hash)
        if len(done) > before:  # what each fold job cost beyond its fit, this machine's figure from now on
            new = len(done) - before
            per = (run.actual_s - MERGE_S - new * sum(done) / len(done)) / new
            self.store["_overhead_s"] = max(1.0, min(120.0, per))
        if done:
            entry = self.store.get(run.cfg_hash) or {}
            self.store[run.cfg_hash] = {**entry, "fold_s": sum(done) / len(done), "source": "measured", "run": run.name}
            save_store(self.store)
        run.decision = run.decision.replace("planned", "bought", 1)
        return True

    def go(self) -> None:
        self.say(f"BUDGET={self.budget_text}: everything ends by {time.strftime('%H:%M:%S', time.localtime(self.deadline))}")
        t = time.time()
        self.make_ok("download", "check", "folds")
        self.say(f"data stages took {fmt(time.time() - t)}")
        chosen = sorted(self.choose(), key=lambda r: r.estimate_s)
        if not chosen:
            raise UserError(f"BUDGET={self.budget_text}: no run fits ({'; '.join(f'{r.name} {r.decision}' for r in self.left)}): "
                            "give a larger budget or MODELS=tfidf")
        self.say("plan: " + ", ".join(f"{r.name} {fmt(r.estimate_s)}" for r in chosen)
                 + (f"; left out: {' '.join(r.name for r in self.left)}" if self.left else ""))
        queue = list(chosen)
        while queue:
            run = queue.pop(0)
            room = self.left_s() - self.reserve_s - self.final_s(len(self.runs) + 1) - sum(q.estimate_s for q in queue)
            if run.estimate_s * self.ratio > room:  # the runs before it took longer than estimated: not started
                run.decision = (f"left out before it started: about {fmt(run.estimate_s * self.ratio)} at the pace "
                                f"so far (×{self.ratio:.2f} the estimates), {fmt(max(0.0, room))} left")
                self.say(f"{run.name}: {run.decision}")
                self.left.append(run)
                continue
            if self.train(run, queue):
                self.runs.append(run)
                self.take_back(queue)
                continue
            self.left.append(run)
            alt = self.smaller_fit(run, run.wanted, [*self.runs, *queue], lambda: self.left_s() - self.reserve_s - self.final_s(
                len(self.runs) + 1) - sum(q.estimate_s for q in queue))
            if alt is not None:
                alt.decision = f"planned smaller, restarted instead of {run.name}"
                queue.insert(0, alt)
        if not self.runs:
            raise UserError(f"BUDGET={self.budget_text}: no run finished in time: give a larger budget")
        names = [r.name for r in self.runs]
        tta_need = sum(r.tta_s for r in self.runs)
        room = self.left_s() - self.reserve_s - self.final_s(len(names))
        use_tta = self.tta and tta_need <= room
        if use_tta and tta_need > 0:
            self.say(f"TTA views of {' '.join(names)} (about {fmt(tta_need)})")
            self.make_ok("tta", f"MODELS={' '.join(names)}")
        self.tta_note = ("TTA: on" if use_tta else f"TTA: off (about {fmt(tta_need)}, {fmt(max(0.0, room))} left)"
                         if self.tta else "TTA: off (TTA=0)")
        self.write_record(names, use_tta)
        t = time.time()
        self.make_ok("all", f"MODELS={' '.join(names)}", f"TTA={1 if use_tta else 0}")
        self.store.setdefault("_final", {})[self.comp.name] = time.time() - t
        save_store(self.store)
        used = time.time() - self.t0
        self.say(f"done in {fmt(used)} of {fmt(self.budget_s)} ({100 * used / self.budget_s:.0f}%)")

    def write_record(self, names: list[str], use_tta: bool) -> None:
        from medalist.core.io import write_json, write_text

        rows = [*self.runs, *self.left]
        rec = {"budget": self.budget_text, "budget_s": self.budget_s, "runs": names, "tta": use_tta,
               "probe_s": round(self.probe_s, 1), "started": self.t0,
               "table": [dataclasses.asdict(r) for r in rows], "note": self.tta_note}
        write_json(self.paths.results / "budget.json", rec)
        lines = [f"BUDGET={self.budget_text} bought {' '.join(names)}; {self.tta_note}. "
                 f"Probing took {fmt(self.probe_s)}; the ensemble and the report come after this table.", "",
                 "| run | for | estimate | from | actual | what happened |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r.name} | {r.wanted if r.wanted != r.name else r.origin} | "
                         f"{fmt(r.estimate_s) if r.estimate_s is not None else '–'} | {r.source or '–'} | "
                         f"{fmt(r.actual_s) if r.actual_s is not None else '–'} | {r.decision} |")
        write_text(self.paths.results / "budget.md", "\n".join(lines) + "\n")


def _kill(p: subprocess.Popen) -> None:
    """Stop make and every fold job under it (its own session); make deletes half-written targets."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def jobs_from_makeflags() -> int:
    m = re.search(r"(?:^|\s)-j\s*(\d+)", " " + os.environ.get("MAKEFLAGS", ""))
    return int(m.group(1)) if m else 1


@C.cli
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["probe"]:
        ap = argparse.ArgumentParser(prog="python -m medalist.budget probe")
        ap.add_argument("--comp", required=True)
        ap.add_argument("--models", required=True)
        ap.add_argument("--cap", type=float, default=60.0)
        ap.add_argument("--shared", default="", help="families whose first fit computes the competition's features")
        ap.add_argument("--shared-cap", type=float, default=0.0)
        ap.add_argument("--out", required=True, help="the JSON list of results")
        a = ap.parse_args(args[1:])
        from medalist.core.io import write_json

        write_json(Path(a.out), probe(a.comp, a.models.split(), a.cap, tuple(a.shared.split()), a.shared_cap))
        return
    ap = argparse.ArgumentParser(prog="python -m medalist.budget", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comp", required=True)
    ap.add_argument("--budget", required=True)
    ap.add_argument("--preset", default="good")
    ap.add_argument("--models", default="", help="MODELS given by hand: the candidates, in this order")
    ap.add_argument("--suffix", default="", help="the generated-source suffix of USE_GEN / GEN (+gen, +aug …)")
    ap.add_argument("--tta", type=int, default=1)
    a = ap.parse_args(args)
    if shutil.which("make") is None:
        raise UserError("make is not on PATH")
    Driver(a.comp, a.budget, a.preset, a.models, a.suffix, jobs_from_makeflags(), bool(a.tta)).go()


if __name__ == "__main__":
    main()
