"""Every example's --small mode runs, checks its own output and leaves nothing in the store."""
from __future__ import annotations

import collections
import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str, tmp_path: Path, *args: str, timeout: float = 240) -> str:
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(store), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(REPO / "examples" / name), "--small", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} --small failed:\n{proc.stdout}\n{proc.stderr}"
    left = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert left == [], f"{name} left objects in the store: {left[:5]}"
    return proc.stdout


def test_sort_small(tmp_path):
    out = run_example("sort.py", tmp_path)
    assert "sorted and verified" in out and "same checksum (a permutation)" in out


def test_sort_of_fewer_records_than_partitions_and_counts_refused_before_launch(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    script = str(REPO / "examples" / "sort.py")
    # One record, two mappers and reducers: a mapper and a reducer have none (an empty array
    # of records was refused by the store as "not contiguous").
    proc = subprocess.run([sys.executable, script, "--size", "150", "--mappers", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "sorted and verified" in proc.stdout, proc.stderr
    for args, match in ((["--partitions", "0"], "--partitions: '0' is not a whole number of calls"),
                        (["--size", "0"], "--size: size '0' holds no 100-byte record")):
        bad = subprocess.run([sys.executable, script, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and match in bad.stderr.splitlines()[-1], bad.stderr
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_wordcount_small(tmp_path):
    assert "matches the local count" in run_example("wordcount.py", tmp_path)


def test_wordcount_strict_stops_at_text_that_is_not_utf8_in_one_line(tmp_path):
    # --small holds a latin-1 file: counted by default (test_wordcount_small); strict names it
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(store), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "wordcount.py"), "--small", "--errors", "strict"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"/3\.txt: byte \d+ \(b'\\x[0-9a-f]{2}'\) is not valid utf-8", lines[0]), lines[0]
    assert "--encoding" in lines[0] and "--errors replace" in lines[0]
    assert [p for p in store.rglob("*") if p.is_file()] == []


def test_wordcount_reads_utf16_text_whole_and_refuses_an_unknown_encoding_before_launch(tmp_path):
    rng = random.Random(7)
    vocab = "naïve café über data map reduce Ċat it's".split()  # Ċ: a 0x0a byte inside it in UTF-16
    lines = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 9))) for _ in range(2000)]
    (tmp_path / "in.txt").write_bytes("\n".join(lines).encode("utf-16"))
    want = collections.Counter(w for line in lines for w in re.findall(r"(?:[^\W\d_]|')+", line.lower()))  # (any script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    script = str(REPO / "examples" / "wordcount.py")
    proc = subprocess.run([sys.executable, script, "in.txt", "--encoding", "utf-16", "--chunk-size", "10KB",
                           "--top", "100"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    got = {w: int(n) for n, w in (line.split() for line in proc.stdout.splitlines())}
    assert got == dict(want)  # (before: every chunk past the first stopped at a cut character)
    assert "one map call per file" in proc.stderr
    bad = subprocess.run([sys.executable, script, "in.txt", "--encoding", "utf-9"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "unknown encoding: utf-9" in bad.stderr
    assert not (tmp_path / "store").exists() or [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("args, match", [(["--size", "99999999999999999999GB"], "is more than 10 TB"),
                                         (["--size", "9" * 400], "is more than 10 TB"),
                                         (["--size", "5000GB"], "needs about 10,000.0 GB in the store")])
def test_sort_refuses_a_size_it_cannot_hold_in_one_line(tmp_path, args, match):
    """probe16's findings 1 and 2: an absurd --size filled the driver's memory listing its
    mappers (MemoryError after gigabytes), one past a float was an OverflowError's traceback,
    and one larger than the store's room ran until the store was full."""
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "sort.py"), *args], cwd=tmp_path,
                          env=_example_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert match in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("args, match", [(["--chunk-size", "abc"], "--chunk-size: bad size 'abc'"),
                                         (["--chunk-size", "1e400"], "--chunk-size: bad size '1e400'"),
                                         (["--chunk-size", "0"], "--chunk-size: bad size '0'"),
                                         (["--top", "-1"], "--top: '-1' is not a whole number")])
def test_wordcount_refuses_bad_arguments_in_one_line(tmp_path, args, match):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "wordcount.py"), str(tmp_path), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr  # (abc was a ValueError traceback)
    assert match in proc.stderr.splitlines()[-1]


def test_wordcount_on_a_fifo_an_empty_file_and_absurd_partitions(tmp_path):
    """A FIFO was said not to exist; an empty file printed nothing at all; --partitions 100000
    ran for minutes on a 3-word file (a reducer call per partition). Each is now one line."""
    script = str(REPO / "examples" / "wordcount.py")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "small.txt").write_text("a b c\n")

    def run(*args):
        return subprocess.run([sys.executable, script, *args], cwd=tmp_path, env=_example_env(tmp_path),
                              capture_output=True, text=True, timeout=120)

    fifo = run("fifo")
    assert fifo.returncode == 2 and fifo.stderr.splitlines() == [
        "wordcount: fifo is not a regular file or a directory (a FIFO); give a file, a directory, or an s3:// URL"], fifo
    # Any bad source found before launch exits 2, as other bad input does (probe16's finding 8: these exited 1).
    for source in ("missing.txt", "ftp://host/x"):
        bad = run(source)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr, bad
    empty = run("empty.txt")
    assert empty.returncode == 0 and empty.stdout == "0 words in empty.txt\n", empty
    absurd = run("small.txt", "--partitions", "100000")
    assert absurd.returncode == 2 and "Traceback" not in absurd.stderr
    assert "--partitions: '100000' is more than 1,000 reducers" in absurd.stderr.splitlines()[-1], absurd.stderr
    assert _stored(tmp_path) == []


def test_parameter_server_small(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary on PATH (.ci/run installs it with apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        pytest.skip("the redis Python client is not installed (pip install -e '.[test]')")
    assert "converged" in run_example("parameter_server.py", tmp_path)


def test_sweep_small(tmp_path):
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn is not installed (pip install -e '.[test]')")
    assert "best {'C'" in run_example("sweep.py", tmp_path)


@pytest.mark.parametrize("name, missing", [("sort.py", "numpy"), ("sweep.py", "sklearn"),
                                           ("parameter_server.py", "numpy"), ("parameter_server.py", "redis")])
def test_a_missing_dependency_is_one_line_naming_the_extra(tmp_path, name, missing):
    # as after `pip install -e .` alone: the module cannot be imported
    code = (f"import runpy, sys; sys.modules[{missing!r}] = None; sys.argv = [{name!r}, '--small']; "
            f"runpy.run_path({str(REPO / 'examples' / name)!r}, run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    package = "scikit-learn" if missing == "sklearn" else missing
    assert f"examples/{name} needs {package}" in lines[0] and "pip install -e '.[examples]'" in lines[0]


def _example_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _stored(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "store").rglob("*") if p.is_file()] if (tmp_path / "store").exists() else []


def test_sort_generates_the_records_asked_for_even_with_more_mappers_than_records(tmp_path):
    # 10 records on 20 mappers: each mapper made max(1, 10 // 20) = 1, so 20 records were
    # generated and sorted, twice what --size asked for, without a word
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "sort.py"), "--size", "1000", "--mappers", "20"],
                          cwd=tmp_path, env=_example_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("generated 10 records ") and "sorted and verified" in proc.stdout, proc.stdout
    assert "10 records of 100 bytes, fewer than the 20 mappers: 10 of their objects are empty" in proc.stderr
    assert _stored(tmp_path) == []


@pytest.mark.parametrize("name, args", [("sort.py", ["--size", "1000", "--mappers", "2"]), ("wordcount.py", ["--small"])])
def test_output_into_a_closed_pipe_ends_quietly_and_cleans_the_store(tmp_path, name, args):
    """``example | head -1``: the reader gone, the next print ended in a BrokenPipeError
    traceback (exit status 1)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / name), *args], cwd=tmp_path,
                            env=_example_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # (as head does after its line: every write now fails)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141 and "Error" not in err, err  # (128 + SIGPIPE, as a command killed by it)
    assert _stored(tmp_path) == []


def test_wordcount_on_utf16_without_a_byte_order_mark_names_the_byte_order_options(tmp_path):
    """The advice ended "(here: --encoding ENCODING, or --errors replace)" though --errors
    replace was in effect (the default) and could not help: the way on is the byte order."""
    (tmp_path / "nobom.txt").write_bytes("hello world\n".encode("utf-16-le"))
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "wordcount.py"), "nobom.txt", "--encoding", "utf-16"],
                          cwd=tmp_path, env=_example_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.endswith("(here: --encoding utf-16-le or --encoding utf-16-be, the byte order the text was written in)")
    assert "--errors replace" not in last
    fixed = subprocess.run([sys.executable, str(REPO / "examples" / "wordcount.py"), "nobom.txt", "--encoding",
                            "utf-16-le"], cwd=tmp_path, env=_example_env(tmp_path), capture_output=True, text=True,
                           timeout=120)
    assert fixed.returncode == 0 and fixed.stdout.split() == ["1", "hello", "1", "world"], fixed.stderr


def test_wordcount_counts_words_of_any_script_and_says_what_did_not_decode(tmp_path):
    """Words were ASCII letters only: `--encoding latin-1` changed nothing (latin-1 `café` counted as
    `caf` either way, UTF-8 `naïve` as `na` and `ve`), and bytes replaced for not decoding went
    unmentioned. Now a word is letters of any script, and a count that left characters out says so."""
    script = str(REPO / "examples" / "wordcount.py")
    (tmp_path / "latin1.txt").write_bytes("café naïve café\n".encode("latin-1"))
    (tmp_path / "utf8.txt").write_text("Café naïve it's 42 foo_bar\n", encoding="utf-8")

    def run(*args):
        proc = subprocess.run([sys.executable, script, *args], cwd=tmp_path, env=_example_env(tmp_path),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return {w: int(n) for n, w in (line.split() for line in proc.stdout.splitlines())}, proc.stderr

    counts, err = run("latin1.txt")
    assert counts == {"caf": 2, "na": 1, "ve": 1}, counts
    assert err.splitlines()[-1].startswith("wordcount: 3 characters did not decode as utf-8 and were replaced"), err
    assert "--encoding latin-1" in err
    counts, err = run("latin1.txt", "--encoding", "latin-1")
    assert counts == {"café": 2, "naïve": 1} and err == "", (counts, err)
    counts, err = run("utf8.txt")
    assert counts == {"café": 1, "naïve": 1, "it's": 1, "foo": 1, "bar": 1} and err == "", (counts, err)
    assert _stored(tmp_path) == []


@pytest.fixture
def wordcount_module():
    """examples/wordcount.py loaded afresh (its word pattern for non-ASCII lines not built yet)."""
    spec = importlib.util.spec_from_file_location("wordcount_under_test", REPO / "examples" / "wordcount.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("line, words", [
    ("हिन्दी भाषा", {"हिन्दी": 1, "भाषा": 1}),  # vowel signs and virama (Mn, Mc) were cut out: ह, न, द, भ, ष
    (unicodedata.normalize("NFD", "Café naïve"), {"café": 1, "naïve": 1}),  # was cafe, nai, ve
    ("مَرْحَبًا بِكُمْ", {"مَرْحَبًا": 1, "بِكُمْ": 1}),  # harakat: one-letter words
    ("İstanbul", {"i\u0307stanbul": 1}),  # lower() gives i + U+0307: was i, stanbul
    # Brahmi, a mark above U+FFFF (the pattern's other class of marks): was two words
    ("\U00011005\U00011032\U00011044\U00011013", {"\U00011005\U00011032\U00011044\U00011013": 1}),
    ("\u0301x 2\u0301 _\u0301 it's", {"x": 1, "it's": 1}),  # a mark with no letter before it is no word
])
def test_wordcount_keeps_combining_marks_in_words(wordcount_module, line, words):
    """A word was letters and apostrophes only, so it was cut at every combining mark
    (Unicode category M), and NFD text counted other words than NFC text (probe8 #6)."""
    counts = collections.Counter()
    wordcount_module.count_line(counts, line)
    assert dict(counts) == words


def test_wordcount_counts_nfc_and_nfd_text_alike_and_builds_its_pattern_only_for_non_ascii(wordcount_module):
    wc = wordcount_module
    wc.count_line(collections.Counter(), "plain ascii it's")
    assert wc._word_any is None  # (the ASCII path, the benchmark's, never builds the mark class)
    text = ["Ünïcödé café, déjà vu: naïve Ångström", "한국어 텍스트 İzmir", "Tiếng Việt có dấu", "plain ascii it's"]
    counted = {}
    for form in ("NFC", "NFD"):
        counts = collections.Counter()
        for line in text:
            wc.count_line(counts, unicodedata.normalize(form, line))
        counted[form] = counts
    assert counted["NFC"] == counted["NFD"]
    assert counted["NFC"]["tiếng"] == counted["NFC"]["한국어"] == counted["NFC"]["ångström"] == 1, counted["NFC"]


def test_wordcount_mark_planes_hold_every_combining_mark(wordcount_module):
    """The mark class is built from MARK_PLANES only (~50 ms, all planes ~200 ms): if a
    Unicode version puts a mark elsewhere, this says so."""
    every = [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("M")]
    assert [cp for lo, hi in wordcount_module.mark_ranges() for cp in range(lo, hi + 1)] == every


def test_wordcount_mark_planes_hold_every_number_that_is_not_a_digit(wordcount_module):
    every = [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) in ("Nl", "No")]
    assert [cp for lo, hi in wordcount_module.number_ranges() for cp in range(lo, hi + 1)] == every


@pytest.mark.parametrize("line, words", [
    ("m² ½ café", {"m": 1, "café": 1}),  # \w holds No: was m², ½
    ("chapter Ⅻ x①y", {"chapter": 1, "x": 1, "y": 1}),  # Nl, No: was ⅻ (lowercased), x①y
    ("\U00010107 ab\U00010107cd 𐄇", {"ab": 1, "cd": 1}),  # an Aegean number (above U+FFFF)
])
def test_wordcount_numbers_that_are_not_digits_are_no_part_of_a_word(wordcount_module, line, words):
    """Words were ``[^\\W\\d_]``: ``\\w`` holds numbers other than digits (Unicode Nl, No),
    so ``m²`` counted as a word and ``½`` as another (probe8)."""
    counts = collections.Counter()
    wordcount_module.count_line(counts, line)
    assert dict(counts) == words


def test_wordcount_replaced_note_does_not_claim_every_u_fffd_failed_to_decode(wordcount_module):
    """A U+FFFD that was in valid UTF-8 text is counted with the replaced bytes (the count
    cannot tell them apart): the note said they all "did not decode"."""
    counts = collections.Counter()
    wordcount_module.count_line(counts, "x\ufffdy")
    assert counts == {"x": 1, "y": 1, wordcount_module.REPLACED: 1}
    one, two = wordcount_module.replaced_note(1, "utf-8"), wordcount_module.replaced_note(2, "utf-8")
    assert one.startswith("wordcount: 1 character did not decode as utf-8 and was replaced, or was U+FFFD in the "
                          "text already"), one
    assert two.startswith("wordcount: 2 characters did not decode as utf-8 and were replaced, or were U+FFFD in "
                          "the text already"), two
