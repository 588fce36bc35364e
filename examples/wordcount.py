"""Word count with the shuffle through the store: the MapReduce hello world.

    python examples/wordcount.py PATH_OR_S3_PREFIX [--chunk-size 16MB] [--partitions 4]
    python examples/wordcount.py --small      # generated text, checked against a local count (the tests run this)

Each mapper gets one newline-aligned chunk of the text (``wrenpack.objects``),
reads it in the worker and yields ``(word, count)`` pairs for its chunk;
wrenpack writes them to the store in ``--partitions`` partitions by a stable
hash of the word; reducer i sums the counts of partition i's words. The driver
sees only the chunk handles and the final counts. Runs unchanged on Lambda
with an S3 store (``WRENPACK_BACKEND=lambda WRENPACK_STORAGE=s3://...``).
"""
from __future__ import annotations

import argparse
import collections
import random
import re
import sys
import uuid

import wrenpack

WORD = re.compile(r"[a-z']+")


def count_words(chunk) -> list[tuple[str, int]]:
    """Mapper: the words of one chunk with their counts (combined here, before the shuffle)."""
    counts = collections.Counter()
    for line in chunk.lines():
        counts.update(WORD.findall(line.lower()))
    return list(counts.items())


def add(word: str, counts: list[int]) -> int:
    """Reducer: called once per word of its partition."""
    return sum(counts)


def wordcount(chunks: list, partitions: int) -> dict[str, int]:
    """{word: count} over the chunks (``wrenpack.objects(...)``)."""
    return wrenpack.map_reduce(count_words, chunks, add, partitions=partitions).result()


def _text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    vocab = "the a of serverless lambda store shuffle map reduce word count python it's data".split()
    return "\n".join(" ".join(rng.choice(vocab).capitalize() if rng.random() < 0.1 else rng.choice(vocab)
                              for _ in range(rng.randrange(0, 12))) for _ in range(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help="a text file, a directory, or s3://bucket/prefix")
    ap.add_argument("--small", action="store_true", help="count generated text and check it against a local count")
    ap.add_argument("--chunk-size", default="16MB", help="bytes per map call (default 16MB)")
    ap.add_argument("--partitions", type=int, default=4, help="reducers (default 4)")
    ap.add_argument("--top", type=int, default=10, help="how many of the most common words to print")
    args = ap.parse_args(argv)
    if not args.small and not args.source:
        ap.error("give a source (file, directory or s3:// prefix), or --small")
    chunk_size = int(float(re.sub(r"(?i)mb$", "e6", re.sub(r"(?i)kb$", "e3", args.chunk_size))))
    if not args.small:
        counts = wordcount(wrenpack.objects(args.source, chunk_size=chunk_size), args.partitions)
    else:
        store = wrenpack.store()
        prefix = f"wordcount-{uuid.uuid4().hex[:8]}/"
        texts = [_text(i, 400) for i in range(3)] + [""]  # an empty file too
        try:
            for i, text in enumerate(texts):
                store.put(f"{prefix}{i}.txt", text.encode())
            counts = wordcount(store.objects(prefix, chunk_size=2000), args.partitions)
        finally:
            store.delete_prefix(prefix)
        expected = collections.Counter(w for t in texts for w in WORD.findall(t.lower()))
        if counts != dict(expected):
            print("MISMATCH with the local count", file=sys.stderr)
            return 1
        print(f"matches the local count: {sum(counts.values())} words, {len(counts)} distinct")
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: args.top]:
        print(f"{n:10d}  {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
