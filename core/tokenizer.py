"""Build a CLIP tokenizer (vocab.json + merges.txt) from a closed word list.

Used for the embedded world model and for small test models: the same byte-level BPE format as
CLIP's, so `CLIPTokenizer` and every tool that reads CLIP tokenizers load it.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_clip_tokenizer(words: list[str], folder: Path, max_length: int = 77) -> CLIPTokenizer:
    """Write a tokenizer in which every word of `words` is one token; other text falls back to bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    vocab_tokens = base + [c + "</w>" for c in base]
    merges: list[str] = []
    seen = set(vocab_tokens)
    for word in dict.fromkeys(w.lower() for w in words):
        chars = list(word[:-1]) + [word[-1] + "</w>"]
        left = chars[0]
        for right in chars[1:]:
            merged = left + right
            if merged not in seen:
                merges.append(f"{left} {right}")
                vocab_tokens.append(merged)
                seen.add(merged)
            left = merged
    vocab_tokens += [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
