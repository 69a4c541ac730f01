"""Stage `generate`: new training rows for under-filled classes from an OpenAI-compatible LLM
server (vLLM, llama.cpp, Ollama …), cached, filtered and label-checked fold by fold.

Reads:  data/processed/<comp>/train.csv, test.csv; configs/generate.yaml;
        configs/competitions/<comp>.yaml (labels, description, folds.n);
        results/<comp>/tfidf/fold<k>/model.joblib (the label filter; `make baseline` makes them);
        env OPENAI_BASE_URL (default http://localhost:8000/v1), OPENAI_API_KEY (default EMPTY)
Writes: data/generated/<comp>/llm_cache.jsonl (every request and answer, appended as they come),
        data/generated/<comp>/llm.csv, generate_stats.json, then rebuilds generated_train.csv
Run:    make generate COMP=demo   (= python -m medalist.stages.generate --comp demo)

Leakage rules (DESIGN.md 3 and 5): a prompt's few-shot examples are training rows of ONE fold f
(rows with fold != f, never test rows), so its answers may train in every fold but f. A row
trains in fold k only if the fold-k TF-IDF model — fitted without fold k — gives its intended
class probability >= label_threshold. Rows equal or near to a test or train row are dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated
import hashlib
import json
import math
import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from medalist.core.config import AtLeastOne, Fraction, NonNegative, Paths, Positive, Range, stage_parser, UserError
from medalist.clients import llm
from medalist.core import config as C
from medalist.core import generated
from medalist.core.competition import Competition, load_competition
from medalist.core.io import read_processed, write_csv, write_json
from medalist.text.clean import normalise
from medalist.text.dedup import near_duplicates, near_duplicates_within


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    model: str  # the name the server serves, e.g. Qwen/Qwen2.5-7B-Instruct
    seed: Annotated[int, NonNegative] = 42
    target_fraction: Annotated[float, Range(gt=0, le=1)] = 0.5  # fill each class up to this fraction of the largest class
    max_per_class: Annotated[int, AtLeastOne] = 300  # at most this many new rows per class
    oversample: Annotated[float, Range(ge=1)] = 1.5  # ask for this many times the target: the filters drop some
    per_request: Annotated[int, AtLeastOne] = 10  # problems asked for in one request
    few_shot: Annotated[int, AtLeastOne] = 5  # examples per prompt, all training rows of one fold
    temperature: Annotated[float, Range(ge=0, le=2)] = 0.9
    top_p: Annotated[float, Range(gt=0, le=1)] = 0.95
    max_tokens: Annotated[int, AtLeastOne] = 2048
    concurrency: Annotated[int, AtLeastOne] = 4  # requests in flight at once
    retries: Annotated[int, NonNegative] = 5  # on 429, 5xx and timeouts
    retry_base_delay: Annotated[float, NonNegative] = 2.0  # seconds before the first retry; doubles each time
    timeout: Annotated[float, Positive] = 120.0  # seconds per request
    min_chars: Annotated[int, NonNegative] = 20
    max_chars: Annotated[int, AtLeastOne] = 2000
    near_dup_ngram: Annotated[int, AtLeastOne] = 5  # character n-grams for the near-duplicate Jaccard
    near_dup_threshold: Annotated[float, Range(gt=0, le=1)] = 0.8
    label_threshold: Annotated[float, Fraction] = 0.5  # fold-k model's probability of the intended class
    system_prompt: str = ("You write new, original competition math problems for a labelled "
                          "dataset. Answer with a JSON list of strings and nothing else.")


@dataclasses.dataclass(frozen=True)
class Request:
    label: int
    fold: int  # the few-shot fold: examples are rows with fold != this
    index: int
    example_ids: tuple[str, ...]
    body: dict  # exactly what is sent: model, messages, temperature, top_p, max_tokens, seed

    @property
    def key(self) -> str:
        return llm.request_key(self.body)

    @property
    def meta(self) -> dict:  # kept in the cache beside the answer
        return {"label": self.label, "fold": self.fold, "index": self.index, "example_ids": list(self.example_ids)}


def load_config() -> GenerateConfig:
    return C.load(GenerateConfig, C.configs_dir() / "generate.yaml")


def targets(cfg: GenerateConfig, labels: pd.Series, n_classes: int) -> dict[int, int]:
    """New rows wanted per class: up to target_fraction of the largest class, capped."""
    counts = labels.value_counts().reindex(range(n_classes), fill_value=0)
    goal = math.ceil(cfg.target_fraction * counts.max())
    return {c: int(min(cfg.max_per_class, max(0, goal - counts[c]))) for c in range(n_classes)}


def prompt(comp: Competition, label: int, examples: list[str], n: int) -> str:
    name = comp.labels[label]
    desc = comp.description.get(name, "")
    shots = "\n".join(f"{i + 1}. {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(examples))
    return (f"Class: {name}\n" + (f"Description: {desc}\n" if desc else "")
            + f"\nExamples of problems in this class:\n{shots}\n\n"
            f"Write {n} new problems that belong to the class \"{name}\". Make them diverse in topic, "
            "difficulty and wording, keep any mathematics in LaTeX ($...$), and do not copy the "
            f"examples. Answer with a JSON list of {n} strings and nothing else.")


def plan(cfg: GenerateConfig, comp: Competition, train: pd.DataFrame, want: dict[int, int]) -> list[Request]:
    requests = []
    for c, target in want.items():
        if target == 0:
            continue
        rows = train[train["label"] == c]
        folds = [f for f in range(comp.folds.n) if (rows["fold"] != f).any()]
        for r in range(math.ceil(target * cfg.oversample / cfg.per_request)):
            f = folds[r % len(folds)]
            pool = rows[rows["fold"] != f]
            seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{c}/{r}".encode()).digest()[:4], "big") >> 1
            pick = np.random.default_rng(seed).choice(len(pool), size=min(cfg.few_shot, len(pool)), replace=False)
            ex = pool.iloc[np.sort(pick)]
            body = dict(
                model=cfg.model,
                messages=[{"role": "system", "content": cfg.system_prompt},
                          {"role": "user", "content": prompt(comp, c, ex["text"].tolist(), cfg.per_request)}],
                temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed,
            )
            requests.append(Request(c, f, r, tuple(ex["id"]), body))
    return requests


# ---------------------------------------------------------------- parsing and filtering


def parse_answer(content: str) -> list | None:
    """The JSON list in an answer (code fences and chatter around it allowed), or None."""
    text = re.sub(r"```(?:json)?", "", content or "")
    start, end = text.find("["), text.rfind("]")
    if start == -1 or end <= start:
        return None
    try:
        items = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    return items if isinstance(items, list) else None


def _item_text(item) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for k in ("problem", "question", "text"):
            if isinstance(item.get(k), str):
                return item[k]
    return None


def load_fold_models(paths: Paths, n_folds: int) -> list:
    files = [paths.run("tfidf") / f"fold{k}" / "model.joblib" for k in range(n_folds)]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise UserError(f"no TF-IDF fold model {missing[0]}: run `make baseline COMP={paths.comp}` first")
    return [joblib.load(f) for f in files]


def class_proba(model, texts: list[str], labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each text's probability of its own label under `model` (columns mapped via classes_)."""
    p = np.asarray(model.predict_proba(texts))
    classes = list(getattr(model, "classes_", range(n_classes)))
    col = {int(c): i for i, c in enumerate(classes)}
    return np.array([p[i, col[int(y)]] if int(y) in col else 0.0 for i, y in enumerate(labels)])


def build_rows(cfg: GenerateConfig, comp: Competition, requests: list[Request], cache: dict[str, dict],
               train: pd.DataFrame, test: pd.DataFrame, models: list, want: dict[int, int]) -> tuple[pd.DataFrame, dict]:
    counts = {k: 0 for k in ("unparseable", "bad_items", "empty", "too_short", "too_long",
                             "duplicate_test", "near_duplicate_test", "duplicate_train", "near_duplicate_train",
                             "duplicate_within", "near_duplicate_within", "off_label", "over_target")}
    cands = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for r in requests:
        resp = cache[r.key]["response"]
        for k in usage:
            usage[k] += resp["usage"].get(k, 0)
        items = parse_answer(resp["content"])
        if items is None:
            counts["unparseable"] += 1
            continue
        for j, item in enumerate(items):
            text = _item_text(item)
            if text is None:
                counts["bad_items"] += 1
                continue
            cands.append(dict(id=f"llm-{r.key[:12]}-{j}", text=text.strip(), label=r.label, fewshot_fold=r.fold))
    df = pd.DataFrame(cands, columns=["id", "text", "label", "fewshot_fold"])
    n = df["text"].str.len()
    for name, bad in (("empty", n == 0), ("too_short", (n > 0) & (n < cfg.min_chars)), ("too_long", n > cfg.max_chars)):
        counts[name] += int(bad.sum())
    df = df[(n >= max(cfg.min_chars, 1)) & (n <= cfg.max_chars)].reset_index(drop=True)

    keys = pd.Series([normalise(t, ignore_spacing=True) for t in df["text"]], dtype=object)
    for ref, name in ((test, "test"), (train, "train")):
        exact = keys.isin({normalise(t, ignore_spacing=True) for t in ref["text"]}).to_numpy()
        near = ~exact & near_duplicates(df["text"].tolist(), ref["text"].tolist(),
                                        cfg.near_dup_threshold, cfg.near_dup_ngram)
        counts[f"duplicate_{name}"] += int(exact.sum())
        counts[f"near_duplicate_{name}"] += int(near.sum())
        df, keys = df[~(exact | near)].reset_index(drop=True), keys[~(exact | near)].reset_index(drop=True)
    exact = keys.duplicated().to_numpy()
    counts["duplicate_within"] += int(exact.sum())
    df = df[~exact].reset_index(drop=True)
    near = near_duplicates_within(df["text"].tolist(), cfg.near_dup_threshold, cfg.near_dup_ngram)
    counts["near_duplicate_within"] += int(near.sum())
    df = df[~near].reset_index(drop=True)

    labels = df["label"].to_numpy()
    usable = np.zeros((len(df), len(models)), dtype=bool)
    for k, model in enumerate(models):  # fold k is judged by the model that never saw fold k
        if len(df):
            usable[:, k] = class_proba(model, df["text"].tolist(), labels, comp.n_classes) >= cfg.label_threshold
    usable[np.arange(len(df)), df["fewshot_fold"].to_numpy(dtype=int)] = False
    df["folds"] = [generated.folds_str(np.flatnonzero(u)) for u in usable]
    counts["fold_exclusions"] = int(sum(comp.folds.n - 1 - u.sum() for u in usable))
    off = ~usable.any(axis=1)
    counts["off_label"] += int(off.sum())
    df = df[~off].reset_index(drop=True)

    keep = df.groupby("label").cumcount() < df["label"].map(want)
    counts["over_target"] += int((~keep).sum())
    df = df[keep].reset_index(drop=True)
    df["source"] = f"llm:{cfg.model}"
    df["parent_id"] = ""
    out = df[generated.COLUMNS + ["fewshot_fold"]]
    return out, {"filtered": counts, "usage_all": usage}


def run(comp_name: str) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp_name)
    cfg = load_config()
    train, test = read_processed(paths)
    models = load_fold_models(paths, comp.folds.n)
    want = targets(cfg, train["label"], comp.n_classes)
    requests = plan(cfg, comp, train, want)
    print(f"generate: targets {[f'{comp.labels[c]}: {t}' for c, t in want.items() if t]}, {len(requests)} requests")
    client = llm.LLMClient(cfg.timeout, cfg.retries, cfg.retry_base_delay)
    cache, sent = llm.fetch(client, requests, paths.generated / "llm_cache.jsonl", cfg.concurrency, "generate")
    rows, stats = build_rows(cfg, comp, requests, cache, train, test, models, want)
    write_csv(paths.generated / "llm.csv", rows)
    stats = {"model": cfg.model, "targets": {comp.labels[c]: t for c, t in want.items()}, **sent, **stats,
             "kept": len(rows),
             "kept_per_class": {comp.labels[c]: int((rows["label"] == c).sum()) for c in want}}
    write_json(paths.generated / "generate_stats.json", stats)
    generated.rebuild(paths)
    u = sent["usage_sent"]
    print(f"generate: tokens this run: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion = "
          f"{u['total_tokens']}; all answers used: {stats['usage_all']['total_tokens']}")
    dropped = {k: v for k, v in stats["filtered"].items() if v}
    print(f"generate: wrote {len(rows)} rows to {paths.generated / 'llm.csv'}; filtered {dropped or 'none'}")
    return paths.generated / "llm.csv"


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.generate", __doc__)
    args = ap.parse_args(argv)
    run(args.comp)


if __name__ == "__main__":
    main()
