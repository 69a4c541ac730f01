"""Tiny text fixtures shared by the text-family tests: a 3-class word-list corpus, and randomly
initialised models saved to disk (a 2-layer BERT with a WordPiece vocabulary, a 2-layer Qwen2 with a
byte-level BPE and no pad token) — no network, a second to build."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = ["algebra", "geometry", "probability"]
WORDS = {
    "algebra": "solve equation polynomial root factor x y variable linear quadratic",
    "geometry": "triangle circle angle area radius side square perimeter polygon",
    "probability": "dice coin chance card probability random expected draw outcome",
}
COMMON = "find the of a value what is given if and compute"


def make_texts(n: int, seed: int, label_of=None) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % len(LABELS) if label_of is None else label_of
        own = WORDS[LABELS[y]].split()
        k = int(rng.integers(3, 14))  # varied lengths, so batches are length-grouped for real
        words = list(rng.choice(own, size=k)) + list(rng.choice(COMMON.split(), size=k // 2)) + [str(rng.integers(0, 9))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


def build_tiny_models(root: Path) -> dict[str, Path]:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(" ".join([*WORDS.values(), COMMON]).split())),
             *map(str, range(10))]
    bert = root / "tiny-bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(vocab=str(bert / "vocab.txt"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(bert)
    tok.save_pretrained(bert)

    qwen = root / "tiny-qwen"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(make_texts(90, 0)[0], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    # no pad token, like many decoder tokenizers: the family must fall back to eos
    qtok = transformers.Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], pad_token=None)
    qcfg = transformers.Qwen2Config(vocab_size=len(model["vocab"]), hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                    max_position_embeddings=64, eos_token_id=qtok.eos_token_id,
                                    tie_word_embeddings=False)
    transformers.Qwen2Model(qcfg).save_pretrained(qwen)
    qtok.save_pretrained(qwen)
    return {"bert": bert, "qwen": qwen}

