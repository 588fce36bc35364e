"""Word count with the shuffle through the store: the MapReduce hello world.

    python examples/wordcount.py PATH_OR_S3_PREFIX [--chunk-size 16MB] [--partitions 4] [--encoding utf-8] [--errors replace]
    python examples/wordcount.py --small      # generated text, checked against a local count (the tests run this)

Each mapper gets one newline-aligned chunk of the text (``wrenpack.objects``),
reads it in the worker and yields ``(word, count)`` pairs for its chunk;
wrenpack writes them to the store in ``--partitions`` partitions by a stable
hash of the word; reducer i sums the counts of partition i's words. The driver
sees only the chunk handles and the final counts. Runs unchanged on Lambda
with an S3 store (``WRENPACK_BACKEND=lambda WRENPACK_STORAGE=s3://...``).

Any input is counted, whatever its encoding: lines are decoded as UTF-8 with
``errors="replace"`` (``chunk.lines(encoding, errors)``), so a byte that is not
UTF-8 (latin-1 text, a stray binary file) becomes U+FFFD, which no word holds:
it ends a word as a space would, and the run ends with one line saying how many
characters were replaced (or were U+FFFD in the text already) and how to read
them. A word is letters of any script and apostrophes, each letter with the
combining marks that follow it (Unicode category M: the vowel signs of
``हिन्दी``, Arabic harakat, the accent of a decomposed ``é``); lines are
lowercased and put in NFC first, so composed and decomposed ``café`` are the
same word. UTF-8 ``café`` is one word, and latin-1 ``café`` read as UTF-8
counts as ``caf`` (its ``é`` replaced); ``--encoding latin-1`` reads such text
as what it is, ``café``. ``--errors strict`` stops at the first byte that
does not decode instead, with one line naming the object, the byte's offset and
the options that read it. Text whose newline is not the byte
``\\n`` (``--encoding utf-16``, ``utf-32``) is read a whole file per map call,
since a chunk's edge could cut one of its characters in two.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import functools
import math
import os
import random
import re
import signal
import sys
import unicodedata

import wrenpack

WORD = re.compile(r"[a-z']+")
#: the same for a line that is not all ASCII (``word_any()``, built at its first use): letters of
#: any script (not digits, not ``_``) and apostrophes, and after the first of them combining marks
_word_any: re.Pattern[str] | None = None
#: the numbers that are not digits (``number_ranges()``), built with ``_word_any``: no part of a word
_numbers: re.Pattern[str] | None = None
#: the planes that hold every combining mark (category M), and every number that is no digit (Nl,
#: No), of the Unicode that Python knows: the
#: BMP, the SMP and plane 14 (variation selectors); planes 2-3 hold ideographs, 4-13 nothing, 15-16
#: private use. Scanning these takes ~50 ms, all of them ~200 ms; a test checks nothing is missed.
MARK_PLANES = ((0, 0x20000), (0xE0000, 0xE1000))
#: the character a byte that did not decode became (``errors="replace"``); its count travels
#: with the words' under this key, which no word can be (it is no letter)
REPLACED = "\ufffd"
#: the most reducers: each is a call, launched whether its partition holds words or not (about
#: 1 ms each locally), and a word count's shuffle is small (each mapper combines its counts first)
MAX_PARTITIONS = 1000


def mark_ranges(categories: str | None = None) -> list[tuple[int, int]]:
    """The code points of Unicode category M (combining marks), as inclusive ranges.
    Python's ``re`` has no ``\\p{M}``, and ``\\w`` holds no mark: without them a word
    was cut at every vowel sign of Hindi, every haraka of Arabic, every decomposed
    accent."""
    return _category_runs(r"M[a-z]", categories)


def number_ranges(categories: str | None = None) -> list[tuple[int, int]]:
    """The code points of Unicode categories Nl and No (numbers that are not digits:
    ``²``, ``½``, ``Ⅻ``, ``①``), as inclusive ranges: ``\\w`` holds them, so ``m²``
    was one word and ``½`` another."""
    return _category_runs(r"N[lo]", categories)


def plane_categories() -> str:
    """Every code point's category in MARK_PLANES, joined: two letters a code point
    (~50 ms; one string for both kinds of ranges)."""
    return "".join("".join(map(unicodedata.category, map(chr, range(lo, hi)))) for lo, hi in MARK_PLANES)


def _category_runs(pattern: str, categories: str | None) -> list[tuple[int, int]]:
    """The runs of code points whose category matches ``pattern`` (found with a pattern
    over ``plane_categories()``, quicker than a loop), as inclusive ranges."""
    categories = plane_categories() if categories is None else categories
    ranges, offset = [], 0
    for lo, hi in MARK_PLANES:
        part = categories[offset:offset + 2 * (hi - lo)]
        offset += 2 * (hi - lo)
        ranges += [(lo + m.start() // 2, lo + m.end() // 2 - 1) for m in re.finditer(rf"(?:{pattern})+", part)]
    return ranges


def word_any() -> re.Pattern[str]:
    """The word pattern of a line that is not all ASCII, built the first time one is
    seen in a process (~50-100 ms; the ASCII text most runs count never pays it)."""
    global _word_any, _numbers
    if _word_any is None:
        categories = plane_categories()
        ranges = mark_ranges(categories)
        bmp = _char_class([(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF])
        astral = _char_class([(max(a, 0x10000), b) for a, b in ranges if b > 0xFFFF])
        # Runs of letters, then of marks and apostrophes (quicker than a character at a time).
        # re tests a class that reaches past U+FFFF range by range (over 100 here), a BMP-only
        # class by table: the marks above U+FFFF are tried only for a character above it.
        astral_marks = rf"|(?=[\U00010000-\U0010ffff])[{astral}]+" if astral else ""
        numbers = number_ranges(categories)
        bmp_numbers = _char_class([(a, min(b, 0xFFFF)) for a, b in numbers if a <= 0xFFFF])
        astral_numbers = _char_class([(max(a, 0x10000), b) for a, b in numbers if b > 0xFFFF])
        # (taken out of a line before its words: in the word pattern they made it 1.5-2x slower)
        _numbers = re.compile(rf"[{bmp_numbers}]" + (rf"|(?=[\U00010000-\U0010ffff])[{astral_numbers}]" if astral_numbers else ""))
        _word_any = re.compile(rf"(?:[^\W\d_]|')(?:[^\W\d_]+|[{bmp}']+{astral_marks})*")
    return _word_any


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """The inside of a ``re`` character class holding ``ranges`` (inclusive)."""
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def count_line(counts: collections.Counter, line: str) -> None:
    """Add one line's words to ``counts``, and the characters in it that did not decode
    (``REPLACED``). An ASCII line (most text) takes the quicker ASCII pattern; any other
    is lowercased and put in NFC, so that a word counts the same composed or not
    (``lower()`` can decompose: ``İ`` becomes ``i`` and U+0307)."""
    if line.isascii():
        counts.update(WORD.findall(line.lower()))
        return
    line = unicodedata.normalize("NFC", line.lower())
    words = word_any().findall(line)
    # Words of letters and apostrophes alone (most, in any script) hold no number. Only when
    # one holds something else (marks, or a number that is no digit, which \w holds: m², ½)
    # are the words looked at for numbers, and the line counted again without them (looking
    # at every non-ASCII line made CJK text 1.5x slower).
    joined = "".join(words).replace("'", "")
    if not joined.isalpha() and _numbers is not None and _numbers.search(joined):
        words = word_any().findall(_numbers.sub(" ", line))
    counts.update(words)
    replaced = line.count(REPLACED)
    if replaced:
        counts[REPLACED] += replaced


def count_words(chunk, encoding: str = "utf-8", errors: str = "replace") -> list[tuple[str, int]]:
    """Mapper: the words of one chunk with their counts (combined here, before the shuffle)."""
    counts = collections.Counter()
    for line in chunk.lines(encoding=encoding, errors=errors):
        count_line(counts, line)
    return list(counts.items())


def add(word: str, counts: list[int]) -> int:
    """Reducer: called once per word of its partition."""
    return sum(counts)


def wordcount(chunks: list, partitions: int, encoding: str = "utf-8", errors: str = "replace") -> dict[str, int]:
    """{word: count} over the chunks (``wrenpack.objects(...)``), and under ``REPLACED``
    how many characters did not decode (if any did)."""
    mapper = functools.partial(count_words, encoding=encoding, errors=errors)
    return wrenpack.map_reduce(mapper, chunks, add, partitions=partitions).result()


def local_count(texts: list[bytes], encoding: str, errors: str, whole_files: bool = False) -> collections.Counter:
    """The same count in this process, line by line as the mappers decode (a whole
    file at a time for text whose newline is not the byte ``\\n``)."""
    lines = ((t.decode(encoding, errors).split("\n") for t in texts) if whole_files else
             ([line.decode(encoding, errors) for line in t.split(b"\n")] for t in texts))
    counts: collections.Counter = collections.Counter()
    for per_file in lines:
        for line in per_file:
            count_line(counts, line)
    return counts


def replaced_note(replaced: int, encoding: str) -> str:
    """The line that says a count left characters out, and how to read them."""
    were = "were" if replaced != 1 else "was"
    return (f"wordcount: {replaced:,} character{'s' if replaced != 1 else ''} did not decode as {encoding} and "
            f"{were} replaced, or {were} U+FFFD in the text already (U+FFFD ends a word); give the text's encoding "
            f"(--encoding latin-1, cp1252, ...) to count them, or --errors strict to stop at the first")


def _text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    vocab = "the a of serverless lambda store shuffle map reduce word count python it's data".split()
    return "\n".join(" ".join(rng.choice(vocab).capitalize() if rng.random() < 0.1 else rng.choice(vocab)
                              for _ in range(rng.randrange(0, 12))) for _ in range(lines))


def _not_utf8(seed: int) -> bytes:
    """Text as an old Windows editor saves it: latin-1, with CRLF line ends, and a few raw bytes."""
    rng = random.Random(seed)
    vocab = "café naïve déjà über map reduce word it's".split()
    lines = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 8))) for _ in range(200)]
    return "\r\n".join(lines).encode("latin-1") + b"\n\x00\xff\xfe binary tail \x80\n"


def check_decodes_with(errors: str) -> None:
    """``LookupError`` if ``errors`` is an error handler for encoding only
    (xmlcharrefreplace, namereplace): decoding with it fails at the first bad byte."""
    try:
        b"\xff".decode("ascii", errors)
    except TypeError:
        raise LookupError(f"--errors {errors} is an error handler for encoding text, not for decoding it") from None
    except UnicodeDecodeError:  # (strict)
        pass


def newline_is_one_byte(encoding: str) -> bool:
    """Whether ``encoding`` writes a newline as the byte ``\\n`` (inside a text,
    after any byte order mark): then chunks cut at that byte cut no character."""
    encoder = codecs.getincrementalencoder(encoding)()
    try:
        encoder.encode("\n")
        newline = encoder.encode("\n")
    except TypeError:
        newline = None
    if not isinstance(newline, bytes):  # (a codec from bytes to bytes, or str to str: "hex", "rot13")
        raise LookupError(f"{encoding!r} is not a text encoding")
    return newline == b"\n"


def cli_advice(exc: UnicodeDecodeError, encoding: str, errors: str) -> str:
    """The options that read text the library's error names, as this command spells them.
    UTF-16 and UTF-32 text without a byte order mark stops whatever ``--errors`` says
    (the stream has no byte order to decode in): its way on is the byte order, not
    ``--errors replace``, which was suggested even when it was already in effect."""
    name = codecs.lookup(encoding).name
    if name in ("utf-16", "utf-32") and (errors != "strict" or "BOM" in str(exc.reason)):
        return f"--encoding {name}-le or --encoding {name}-be, the byte order the text was written in"
    if errors == "strict":
        return "--encoding ENCODING, or --errors replace"
    return "--encoding ENCODING"


def parse_size(text: str) -> int:
    """``16MB``, ``500KB``, ``1GB`` or a number of bytes; at least 1."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([KMG]?B?)\s*", text.upper().replace("E", "e"))
    value = float(m.group(1)) * {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m.group(2)] \
        if m else 0.0
    size = int(value) if math.isfinite(value) else 0  # (1e400 is a float's infinity: an OverflowError's traceback)
    if size < 1:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 16MB, 500KB or a number of bytes")
    return size


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, at least 1")
    return n


def partition_count(text: str) -> int:
    """A count of reducers: at least 1, at most ``MAX_PARTITIONS`` (100000 ran for minutes on 3 words)."""
    n = positive(text)
    if n > MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_PARTITIONS:,} reducers: each is a call of its own, "
                                         "and a word count's shuffle is small; use fewer (default 4)")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help="a text file, a directory, or s3://bucket/prefix")
    ap.add_argument("--small", action="store_true", help="count generated text and check it against a local count")
    ap.add_argument("--chunk-size", type=parse_size, default="16MB", help="bytes per map call (default 16MB)")
    ap.add_argument("--partitions", type=partition_count, default=4,
                    help=f"reducers (default 4, at most {MAX_PARTITIONS:,})")
    ap.add_argument("--top", type=positive, default=10, help="how many of the most common words to print")
    ap.add_argument("--encoding", default="utf-8", help="the text's encoding (default utf-8)")
    ap.add_argument("--errors", default="replace",
                    help="what a byte that does not decode does: replace (default: U+FFFD, ends a word), ignore, "
                         "or strict (stop, naming the object and the byte)")
    args = ap.parse_args(argv)
    if not args.small and not args.source:
        ap.error("give a source (file, directory or s3:// prefix), or --small")
    if args.small and args.source:  # (the source was ignored without a word)
        ap.error("--small counts generated text: give a source or --small, not both")
    chunk_size: int | None = args.chunk_size
    try:  # checked here, before anything launches
        codecs.lookup_error(args.errors)
        check_decodes_with(args.errors)
        whole_files = not newline_is_one_byte(args.encoding)
    except LookupError as exc:
        print(f"wordcount: {exc}; give --encoding a Python codec name (utf-8, latin-1, utf-16, ...) and --errors "
              "replace, ignore or strict", file=sys.stderr)
        return 2
    if whole_files:
        print(f"wordcount: {args.encoding} text: one map call per file, not per --chunk-size (a chunk's edge could cut "
              "a character in two)", file=sys.stderr)
        chunk_size = None
    if not args.small:
        try:  # a source that is missing, of a kind not read, or unreachable: bad input, before anything launches
            sources = wrenpack.objects(args.source, chunk_size=chunk_size)
        except wrenpack.WrenpackError as exc:
            print(f"wordcount: {exc}", file=sys.stderr)
            return 2
    try:
        if not args.small:
            counts = wordcount(sources, args.partitions, args.encoding, args.errors)
        else:
            store = wrenpack.scratch("wordcount.py --small")  # (gone after a SIGKILL too: clean --stale)
            prefix = ""
            if whole_files:  # text written in that encoding, a whole file per map call
                texts = [_text(i, 400).encode(args.encoding) for i in range(3)] + [b""]
                what = f"{args.encoding} text, a file per map call"
            else:  # UTF-8 text, text that is not UTF-8, and an empty file
                texts = [_text(i, 400).encode() for i in range(3)] + [_not_utf8(3), b""]
                what = f"one file not UTF-8, read with --encoding {args.encoding} --errors {args.errors}"
            try:
                for i, text in enumerate(texts):
                    store.put(f"{prefix}{i}.txt", text)
                counts = wordcount(store.objects(prefix, chunk_size=None if whole_files else 2000), args.partitions,
                                   args.encoding, args.errors)
            finally:
                store.close()
            if counts != dict(local_count(texts, args.encoding, args.errors, whole_files)):
                print("MISMATCH with the local count", file=sys.stderr)
                return 1
            replaced = counts.get(REPLACED, 0)
            print(f"matches the local count: {sum(counts.values()) - replaced} words, "
                  f"{len(counts) - (REPLACED in counts)} distinct, {replaced} characters replaced ({what})")
    except wrenpack.TextDecodeError as exc:  # --errors strict and a byte that does not decode, or no byte order mark
        print(f"wordcount: {exc} (here: {cli_advice(exc, args.encoding, args.errors)})", file=sys.stderr)
        return 1
    except wrenpack.WrenpackError as exc:  # a call that failed, the store gone meanwhile...
        print(f"wordcount: {exc}", file=sys.stderr)
        return 1
    replaced = counts.pop(REPLACED, 0)
    if not counts and not args.small:  # (an empty input printed nothing at all)
        print(f"0 words in {args.source}")
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: args.top]:
        print(f"{n:10d}  {word}")
    if replaced and not args.small:  # (after the counts: the line a user reads last)
        print(replaced_note(replaced, args.encoding), file=sys.stderr)
    return 0


def exit_quietly_on_broken_pipe(run) -> int:
    """``run()``, flushed; if whoever reads the output went away (``| head -1``), end
    quietly, as a well-behaved command does, with SIGPIPE's status and no traceback
    (--small removed its text from the store before it printed)."""
    try:
        status = run()
        sys.stdout.flush()  # (piped output is buffered: a closed pipe shows here, or at exit)
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # (Ctrl-C: the calls were stopped and what --small wrote removed; a traceback through wrenpack's futures said nothing more)
        print("wordcount: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    # (SIGTERM and SIGHUP: wrenpack stops the calls and removes their objects and the scratch
    # area, then the signal ends the program, as it would without wrenpack)
    sys.exit(exit_quietly_on_broken_pipe(main))
