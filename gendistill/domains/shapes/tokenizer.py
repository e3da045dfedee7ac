"""A real ``CLIPTokenizer`` whose BPE vocabulary is built from the shapes domain's words.

Every caption word becomes one token; every byte (alone and word-final, as in CLIP's own vocabulary) is a
token too, so any text tokenizes without an unknown token. The merges come from running byte-pair encoding
on the word list until each word is a single symbol, so applying them in rank order (what the tokenizer
does) rebuilds each word exactly. The files written are CLIP's standard ``vocab.json`` / ``merges.txt``.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
WORD_END = "</w>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn each (lower-case, byte-mapped) word into one ``word</w>`` symbol."""
    byte_map = bytes_to_unicode()
    pieces = {}
    for word in sorted(set(words)):
        chars = [byte_map[b] for b in word.lower().encode("utf-8")]
        if chars:
            pieces[word] = chars[:-1] + [chars[-1] + WORD_END]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for seq in pieces.values() for pair in zip(seq, seq[1:]))
        if not counts:
            return merges
        best = max(counts.items(), key=lambda kv: (kv[1], [-ord(c) for c in kv[0][0] + kv[0][1]]))[0]
        merges.append(best)
        pieces = {w: _apply_merge(seq, best) for w, seq in pieces.items()}


def _apply_merge(seq: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's layout: 256 byte symbols, the same with ``</w>``, one token per merge, then the two specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + WORD_END for s in symbols]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer(words, model_max_length: int = 16) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` in which each of ``words`` is a single token."""
    words = [w for w in words if w]
    merges = learn_merges(words)
    vocab = build_vocab(merges)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        merges_file = Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
        merges_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tokenizer = CLIPTokenizer(
            vocab=str(vocab_file), merges=str(merges_file), model_max_length=model_max_length,
            bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
        )
    return tokenizer


def domain_words() -> list[str]:
    """Every word a shapes caption can hold (from the captions module), plus ``a`` and the comma."""
    from gendistill.domains.shapes.captions import VOCABULARY

    return sorted(set(VOCABULARY))


def build_shapes_tokenizer(model_max_length: int = 16) -> CLIPTokenizer:
    """The shapes domain's tokenizer: one token per caption word."""
    return build_tokenizer(domain_words(), model_max_length)


def save_vocab_files(tokenizer: CLIPTokenizer, directory) -> None:
    """Write CLIP's classic ``vocab.json`` and ``merges.txt`` beside ``tokenizer.json`` (older readers use them)."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in model["merges"]]
    (directory / "merges.txt").write_text("\n".join(["#version: 0.2"] + merges) + "\n", encoding="utf-8")
