"""Stage `augment`: offline nlpaug copies of training rows, math protected (text.views).

Reads:  data/processed/<comp>/train.csv, test.csv; configs/augment.yaml;
        configs/competitions/<comp>.yaml (folds.n)
Writes: data/generated/<comp>/aug.csv (id, text, label, source, parent_id, folds),
        data/generated/<comp>/augment_stats.json, then rebuilds generated_train.csv
Run:    make augment COMP=demo   (= python -m medalist.stages.augment --comp demo)

A child keeps its parent's label and trains in every fold but its parent's: its parent is
validated there. Children equal (after normalisation) to a train or test row, their parent or
another child are dropped, and so are near duplicates of a test row (correctness rule 5: the
character n-gram Jaccard of `folds.near_dup_threshold`) and children whose math could not be kept
intact. A child that near-duplicates a validation row of another fold is left out of that fold
by `train`, which counts it in metrics.json.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd

from medalist.core.config import AtLeastOne, Fraction, NonNegative, Paths, Range, stage_parser, UserError
from medalist.core import config as C
from medalist.core import generated
from medalist.core.competition import load_competition
from medalist.core.io import read_processed, write_csv, write_json
from medalist.core.progress import progress
from medalist.text.augmenters import build_augmenter, ensure_wordnet
from medalist.text.clean import normalise
from medalist.text.dedup import near_duplicates
from medalist.text.views import augment_text, child_seed

StepName = Literal["swap", "delete", "crop", "spelling", "keyboard", "synonym", "contextual"]


@dataclasses.dataclass(frozen=True)
class Step:
    name: StepName
    p: Annotated[float, Fraction] = 0.5  # chance that a child goes through this step
    aug_p: Annotated[float, Range(gt=0, le=1)] = 0.1  # fraction of a text's words the step touches
    aug_max: Annotated[int, AtLeastOne] = 3  # at most this many words per text
    model_path: str | None = None  # contextual only: a local masked-LM folder (never downloaded)

    def validate(self, where: str) -> None:
        if self.name == "contextual" and not self.model_path:
            raise UserError(f"{where}: the contextual step needs model_path (a local masked-LM folder)")
        if self.model_path and not Path(self.model_path).is_dir():
            raise UserError(f"{where}: model_path {self.model_path} is not a folder")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    seed: Annotated[int, NonNegative] = 42
    copies: Annotated[int, AtLeastOne] = 3  # children per chosen parent row
    # which classes get children: "rare" (below rare_fraction of the largest), "all", or a list
    # of class indices / names
    classes: Literal["rare", "all"] | tuple[int | str, ...] = "rare"
    rare_fraction: Annotated[float, Range(gt=0, le=1)] = 0.5
    tries: Annotated[int, AtLeastOne] = 3  # attempts per child before it is dropped (math broken or text unchanged)
    steps: tuple[Step, ...] = (Step("swap"), Step("delete"), Step("spelling"), Step("keyboard"), Step("synonym"))

    def validate(self, where: str) -> None:
        if not self.steps:
            raise UserError(f"{where}: steps is empty")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise UserError(f"{where}: a step is listed twice")


def load_config() -> AugmentConfig:
    return C.load(AugmentConfig, C.configs_dir() / "augment.yaml")


def chosen_classes(cfg: AugmentConfig, labels: pd.Series, names: tuple[str, ...]) -> list[int]:
    counts = labels.value_counts().reindex(range(len(names)), fill_value=0)
    if cfg.classes == "all":
        return list(range(len(names)))
    if cfg.classes == "rare":
        return [c for c in range(len(names)) if counts[c] < cfg.rare_fraction * counts.max()]
    out = []
    for c in cfg.classes:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
        elif isinstance(c, int) and 0 <= c < len(names):
            out.append(c)
        else:
            raise UserError(f"augment.yaml: classes: unknown class {c!r}; labels are {list(names)}")
    return sorted(set(out))


def build_steps(cfg: AugmentConfig) -> list[tuple[Step, object]]:
    """(step, protected augmenter) for every step this machine can run."""
    out = []
    for step in cfg.steps:
        if step.name == "synonym" and not ensure_wordnet(C.root() / "data" / "nltk_data"):
            print("note: WordNet not installed (apt-get install wordnet-base wordnet-sense-index): "
                  "skipping synonyms")
            continue
        out.append((step, build_augmenter(step.name, step.aug_p, step.aug_max, step.model_path)))
    if not out:
        raise UserError("augment.yaml: no step can run on this machine")
    return out


def run(comp_name: str) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp_name)
    cfg = load_config()
    train, test = read_processed(paths)
    n_folds = comp.folds.n
    if not train["fold"].between(0, n_folds - 1).all():
        raise UserError(f"train.csv folds are not 0..{n_folds - 1}: rerun `make folds COMP={comp_name}`")
    steps = build_steps(cfg)
    classes = chosen_classes(cfg, train["label"], comp.labels)
    parents = train[train["label"].isin(classes)]
    print(f"augment: {len(parents)} rows of classes {[comp.labels[c] for c in classes]} × {cfg.copies} copies")

    # spacing ignored too: nlpaug re-spaces tokens, so a child that only moved spaces is a copy
    seen_train = {normalise(t, ignore_spacing=True) for t in train["text"]}
    seen_test = {normalise(t, ignore_spacing=True) for t in test["text"]}
    seen_children: set[str] = set()
    counts = dict(made=0, math_or_unchanged=0, duplicate_train=0, duplicate_test=0, duplicate_within=0,
                  near_duplicate_test=0)
    rows = []
    for parent in progress(parents.itertuples(index=False), total=len(parents), desc="augment", unit="row"):
        for j in range(cfg.copies):
            seed = child_seed(cfg.seed, parent.id, j)
            rng = random.Random(seed)
            chain = [(s, a) for s, a in steps if rng.random() < s.p] or [rng.choice(steps)]
            child = augment_text(parent.text, [a for _, a in chain], seed, cfg.tries)
            if child is None:
                counts["math_or_unchanged"] += 1
                continue
            key = normalise(child, ignore_spacing=True)
            reason = ("duplicate_test" if key in seen_test else "duplicate_train" if key in seen_train
                      else "duplicate_within" if key in seen_children else None)
            if reason:
                counts[reason] += 1
                continue
            seen_children.add(key)
            counts["made"] += 1
            rows.append(dict(
                id=f"aug-{parent.id}-{j}", text=child, label=int(parent.label),
                source="aug:" + "+".join(s.name for s, _ in chain), parent_id=parent.id,
                folds=generated.folds_str(k for k in range(n_folds) if k != parent.fold),
            ))
    out = pd.DataFrame(rows, columns=generated.COLUMNS)
    near = near_duplicates(out["text"].tolist(), test["text"].tolist(), comp.folds.near_dup_threshold)
    counts["near_duplicate_test"] = int(near.sum())
    counts["made"] -= int(near.sum())
    out = out[~near].reset_index(drop=True)
    write_csv(paths.generated / "aug.csv", out)
    write_json(paths.generated / "augment_stats.json", dict(
        counts, classes=[comp.labels[c] for c in classes], parents=len(parents), copies=cfg.copies,
        steps=[s.name for s, _ in steps], by_class=out["label"].value_counts().sort_index().to_dict(),
    ))
    generated.rebuild(paths)
    dropped = {k: v for k, v in counts.items() if k != "made" and v}
    print(f"augment: wrote {len(out)} rows to {paths.generated / 'aug.csv'}; dropped {dropped or 'none'}")
    return paths.generated / "aug.csv"


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.augment", __doc__)
    args = ap.parse_args(argv)
    run(args.comp)


if __name__ == "__main__":
    main()
