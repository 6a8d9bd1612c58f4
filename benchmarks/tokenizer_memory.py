"""How much memory does the default model's tokenizer hold? The stand-ins (benchmarks.models) carry testkit's tiny
tokenizer of the real class, so every start-up figure leaves out what a 256k-piece Gemma tokenizer costs.

    python -m benchmarks.tokenizer_memory [--pieces 256000]

Each tokenizer is loaded as the app loads it (AutoTokenizer.from_pretrained on a folder) in a fresh process that has
already imported torch and transformers: its resident memory after the load and after malloc_trim (what stays). The
first row is the stand-in of the default model. The last column: after the encoder drops the tables the class keeps
(clipsearch.core.encoder.drop_construction_tables). The second is a synthetic byte-pair tokenizer.json with --pieces
pieces, one merge each and the real repos' tokenizer class (GemmaTokenizer): the same kind of structure as Gemma's
256k vocabulary and merges, made here because the real file cannot be downloaded. Its size on disk and its pieces
are not Gemma's, so the row is an estimate of the real one, not a measurement of it.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, Report, arguments, fresh_folder
from benchmarks.models import DEFAULT_MODEL, random_model

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's first four ids


def synthetic_tokenizer(folder: Path, pieces: int, like: Path) -> Path:
    """A byte-pair tokenizer of `pieces` pieces in `folder`, with `like`'s tokenizer_config.json (its class)."""
    from tokenizers import Tokenizer, models

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(0x400, 0x450)] + \
        [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]  # Latin, Cyrillic and CJK characters
    vocab = {piece: number for number, piece in enumerate(SPECIALS + alphabet)}
    tokens, merges = list(alphabet), []
    while len(vocab) < pieces:  # each new piece is a merge of an existing piece and a character
        left = rng.choice(tokens[-5000:] if len(tokens) > 5000 and rng.random() < 0.5 else tokens)
        right = rng.choice(alphabet)
        if (piece := left + right) in vocab or len(piece) > 16:
            continue
        vocab[piece] = len(vocab)
        tokens.append(piece)
        merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.save(str(folder / "tokenizer.json"))
    shutil.copy(like / "tokenizer_config.json", folder / "tokenizer_config.json")
    return folder


MEASURE = """
import ctypes, gc, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
import torch, transformers
from transformers import AutoTokenizer
from clipsearch.core.encoder import drop_construction_tables  # and what it imports, before the baseline
before = rss()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
loaded = rss()
gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
kept = rss()
drop_construction_tables(tokenizer)
gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
print(json.dumps({"class": type(tokenizer).__name__, "pieces": len(tokenizer), "loaded": loaded - before,
                  "kept": kept - before, "app": rss() - before}))
"""


def measure(folder: Path) -> dict:
    child = subprocess.run([sys.executable, "-c", MEASURE, str(folder)], cwd=ROOT, capture_output=True, text=True,
                           check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--pieces", type=int, default=256_000, help="pieces of the synthetic tokenizer (Gemma: 256k)")
    args = parser.parse_args()
    report = Report.start("tokenizer_memory", "Tokenizer memory: the stand-in's and a 256k-piece one")
    stand_in = random_model(DEFAULT_MODEL, args.cache)
    synthetic = synthetic_tokenizer(fresh_folder(args.cache / "tokenizer-memory"), args.pieces, stand_in)
    rows = []
    subjects = ((f"stand-in of {DEFAULT_MODEL}", stand_in), (f"synthetic, {args.pieces:,} pieces", synthetic))
    for label, folder in subjects:
        row = measure(folder)
        size = (folder / "tokenizer.json").stat().st_size / 1e6
        rows.append(f"| {label} | {row['class']} | {row['pieces']:,} | {size:.1f} | {row['loaded']:.0f} | "
                    f"{row['kept']:.0f} | **{row['app']:.0f}** |")
        print(rows[-1], flush=True)
    body = ("| tokenizer | class | pieces | tokenizer.json MB | resident after loading, MB | after malloc_trim, MB | "
            "as the encoder keeps it, MB |\n|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows) +
            "\n\nThe app loads the tokenizer once, drops the vocabulary and merges the tokenizer class keeps after "
            "building its Rust tokenizer (clipsearch.core.encoder.drop_construction_tables), and trims freed memory "
            "(clipsearch.core.precision.release_freed_memory). The last column is therefore what the real tokenizer "
            "adds to the start-up pages' 'RSS at ready', which were measured with the stand-in's. The synthetic row is "
            "an estimate: it has Gemma's number of pieces, not Gemma's pieces.\n")
    report.write(body, args.results)


if __name__ == "__main__":
    main()
