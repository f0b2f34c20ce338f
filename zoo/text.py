"""English sentences for zoo:minilm, and its tokenizer.

Contract:
    * :func:`topic_sentences` generates distinct English sentences from a small template grammar
      (a frame, then a subject, a verb phrase, an object and a setting drawn from one of
      :data:`TOPICS`' word lists), seeded: the same ``(n, seed)`` gives the same list on every
      machine. The topics share the frames and differ in their content words, so a sentence's
      nearest neighbours are mostly of its own topic, and nearest-neighbour agreement between
      two encoders means something.
    * :func:`tokenize` turns sentences into int64 token ids ``(N, seq_len)`` with the package's
      ``tokenizer.json`` (lower-cased WordPiece, ``[CLS] ... [SEP]``, padded with 0 =
      ``[PAD]``, truncated to ``seq_len``), what :class:`zoo.minilm.MiniLM` takes. Every
      generated sentence fits in 32 ids.
    * :func:`write_inputs` writes an inputs file for ``--inputs`` (the fidelity task:
      distillation from the original on ``x``, scored on ``x_val`` and ``x_test``): ``.npz``
      with ``x``, ``x_val``, ``x_test``, a seeded 70/15/15 split of :func:`sentences`. ``python -m
      zoo.text minilm_inputs.npz`` writes one.
"""

from __future__ import annotations

import argparse
import functools
import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zoo.minilm import INPUT_SHAPE, model_dir

__all__ = ["SEQ_LEN", "TOPICS", "sentences", "tokenize", "topic_sentences", "write_inputs"]

SEQ_LEN = INPUT_SHAPE[1]

# Topic-neutral frames: {S} a subject, {V} a verb phrase in the past tense, {O} an object, {T} a
# setting; the topic lies in the content words only.
_FRAMES = (
    "{S} {V} {O} {T}.",
    "{T}, {s} {V} {O}.",
    "We heard that {s} {V} {O} {T}.",
    "According to a friend, {s} {V} {O}.",
    "Nobody expected that {s} {V} {O} {T}.",
    "{S} {V} {O}, and everyone noticed.",
)

TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "cooking": {
        "S": (
            "the chef",
            "my grandmother",
            "the baker",
            "a young cook",
            "the restaurant owner",
            "our neighbour",
            "the pastry student",
            "the kitchen team",
        ),
        "V": (
            "slowly simmered",
            "carefully seasoned",
            "baked",
            "chopped",
            "roasted",
            "tasted",
            "fried",
            "stirred",
        ),
        "O": (
            "a pot of tomato soup",
            "fresh bread",
            "the garlic and onions",
            "a lemon cake",
            "the vegetable stew",
            "a tray of cookies",
            "the chicken curry",
            "a bowl of pasta",
            "the apple pie",
            "some spicy noodles",
        ),
        "T": (
            "in the kitchen",
            "for the dinner party",
            "before the guests arrived",
            "in a hot oven",
            "on the old stove",
            "for the family lunch",
        ),
    },
    "weather": {
        "S": (
            "the storm",
            "a cold wind",
            "heavy rain",
            "the thick fog",
            "a sudden frost",
            "the summer heat",
            "the snowfall",
            "a strong breeze",
        ),
        "V": (
            "covered",
            "flooded",
            "swept across",
            "froze",
            "soaked",
            "darkened",
            "battered",
            "cooled",
        ),
        "O": (
            "the northern valley",
            "the coastal roads",
            "the mountain villages",
            "the farm fields",
            "the city streets",
            "the harbour",
            "the forest",
            "the whole region",
            "the airport runways",
            "the small islands",
        ),
        "T": (
            "during the night",
            "all weekend",
            "early this morning",
            "for three days",
            "after a sunny afternoon",
            "without any warning",
        ),
    },
    "football": {
        "S": (
            "the striker",
            "the goalkeeper",
            "our captain",
            "the home team",
            "the coach",
            "a young defender",
            "the midfielder",
            "the visiting side",
        ),
        "V": (
            "scored against",
            "defended against",
            "passed the ball past",
            "beat",
            "tackled",
            "outplayed",
            "celebrated a goal against",
            "lost to",
        ),
        "O": (
            "the league champions",
            "their old rivals",
            "the defending players",
            "the national team",
            "the referee's favourite club",
            "the away fans' team",
            "the cup winners",
            "the bottom club",
            "the keeper",
            "the second division side",
        ),
        "T": (
            "in the final minute",
            "at the packed stadium",
            "during extra time",
            "in the cup semi-final",
            "after a penalty",
            "in front of the fans",
        ),
    },
    "computers": {
        "S": (
            "the programmer",
            "our server",
            "the new laptop",
            "the database admin",
            "a security researcher",
            "the software team",
            "the compiler",
            "the old computer",
        ),
        "V": (
            "crashed while running",
            "installed",
            "debugged",
            "compiled",
            "updated",
            "encrypted",
            "backed up",
            "rebooted after loading",
        ),
        "O": (
            "the operating system",
            "a large database",
            "the web application",
            "the network drivers",
            "the source code",
            "a python script",
            "the firmware",
            "the cloud storage",
            "the graphics card driver",
            "the email server",
        ),
        "T": (
            "after the update",
            "overnight",
            "in the data centre",
            "on the test machine",
            "before the release",
            "without a single error",
        ),
    },
    "music": {
        "S": (
            "the pianist",
            "the orchestra",
            "a jazz band",
            "the singer",
            "the violinist",
            "the choir",
            "our drummer",
            "the guitarist",
        ),
        "V": (
            "performed",
            "rehearsed",
            "recorded",
            "composed",
            "played",
            "sang",
            "improvised on",
            "arranged",
        ),
        "O": (
            "a slow melody",
            "the symphony",
            "an old folk song",
            "the new album",
            "a piano sonata",
            "the opening chords",
            "a love ballad",
            "the concert programme",
            "a cheerful tune",
            "the jazz standard",
        ),
        "T": (
            "at the concert hall",
            "in the recording studio",
            "for a large audience",
            "on the festival stage",
            "at the evening concert",
            "in a small club",
        ),
    },
    "gardening": {
        "S": (
            "the gardener",
            "my uncle",
            "the farmer",
            "our neighbour's daughter",
            "the flower grower",
            "a volunteer",
            "the landscape designer",
            "the old farmer",
        ),
        "V": (
            "planted",
            "watered",
            "pruned",
            "harvested",
            "weeded",
            "fertilised",
            "dug up",
            "grew",
        ),
        "O": (
            "the rose bushes",
            "a row of carrots",
            "the apple trees",
            "the tulip bulbs",
            "the tomato plants",
            "the herb garden",
            "a hedge of lavender",
            "the potatoes",
            "the young seedlings",
            "the strawberry beds",
        ),
        "T": (
            "in the spring",
            "in the back garden",
            "after the first rain",
            "in the greenhouse",
            "along the fence",
            "before the frost",
        ),
    },
    "medicine": {
        "S": (
            "the doctor",
            "the nurse",
            "a surgeon",
            "the hospital",
            "the pharmacist",
            "a young patient",
            "the medical team",
            "the dentist",
        ),
        "V": (
            "treated",
            "examined",
            "prescribed antibiotics for",
            "vaccinated",
            "operated on",
            "diagnosed",
            "cared for",
            "monitored",
        ),
        "O": (
            "the infection",
            "a broken arm",
            "the elderly patients",
            "a high fever",
            "the injured player",
            "a heart condition",
            "the children",
            "a bad cough",
            "the allergy",
            "a sprained ankle",
        ),
        "T": (
            "at the clinic",
            "in the emergency room",
            "during the night shift",
            "after the accident",
            "at the hospital",
            "before the surgery",
        ),
    },
    "finance": {
        "S": (
            "the bank",
            "the investor",
            "the central bank",
            "our accountant",
            "the stock market",
            "a small company",
            "the finance minister",
            "the trader",
        ),
        "V": (
            "raised",
            "cut",
            "invested in",
            "sold",
            "borrowed against",
            "audited",
            "doubled",
            "lost money on",
        ),
        "O": (
            "the interest rates",
            "government bonds",
            "the company shares",
            "the annual budget",
            "a property loan",
            "the pension fund",
            "the quarterly profits",
            "foreign currency",
            "the tax returns",
            "the savings account",
        ),
        "T": (
            "last quarter",
            "after the market crash",
            "at the end of the year",
            "despite high inflation",
            "during the recession",
            "before the elections",
        ),
    },
}


def topic_sentences(n: int = 1500, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct ``(topic, sentence)`` pairs, the topics in turn, seeded.

    Raises:
        ValueError: ``n`` is below 1 or more than the grammar can make distinct.
    """
    if n < 1 or n > 20_000:
        raise ValueError(f"n must be in 1..20000 (got {n})")
    rng = random.Random(seed)
    names = sorted(TOPICS)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        topic = names[len(out) % len(names)]
        words = {slot: rng.choice(choices) for slot, choices in TOPICS[topic].items()}
        frame = rng.choice(_FRAMES)
        text = frame.format(
            S=words["S"][0].upper() + words["S"][1:],
            s=words["S"],
            V=words["V"],
            O=words["O"],
            T=words["T"][0].upper() + words["T"][1:] if frame.startswith("{T}") else words["T"],
        )
        if text not in seen:
            seen.add(text)
            out.append((topic, text))
    return out


def sentences(n: int = 1500, *, seed: int = 0) -> list[str]:
    """The sentences of :func:`topic_sentences`."""
    return [text for _, text in topic_sentences(n, seed=seed)]


@functools.lru_cache(maxsize=1)
def _tokenizer(seq_len: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(length=seq_len, pad_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(texts: list[str] | tuple[str, ...], seq_len: int = SEQ_LEN) -> Tensor:
    """Token ids ``(len(texts), seq_len)``, int64, of all-MiniLM-L6-v2's tokenizer.

    Raises:
        MiniLMFilesMissing: the package holding the tokenizer is missing (`zoo.minilm.model_dir`).
    """
    encodings = _tokenizer(seq_len).encode_batch(list(texts))
    return torch.tensor([e.ids for e in encodings], dtype=torch.int64).reshape(-1, seq_len)


def write_inputs(path: str | Path, n: int = 1500, *, seed: int = 0) -> Path:
    """Write ``n`` generated sentences' token ids to an ``.npz`` inputs file: ``x`` (70%),
    ``x_val`` and ``x_test`` (15% each, a seeded shuffle of :func:`sentences`).

    Returns:
        The path written.
    """
    ids = tokenize(sentences(n, seed=seed)).numpy()
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, round(n * 0.15))
    path = Path(path)
    np.savez(
        path,
        x=ids[np.sort(order[2 * k :])],
        x_val=ids[np.sort(order[:k])],
        x_test=ids[np.sort(order[k : 2 * k])],
    )
    return path


def _main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m zoo.text", description="Write generated sentences' token ids for --inputs."
    )
    parser.add_argument("out", type=Path, help="the .npz to write (x, x_val, x_test)")
    parser.add_argument("--n", type=int, default=1500, help="sentences (default 1500)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_inputs(args.out, args.n, seed=args.seed))


if __name__ == "__main__":
    _main()
