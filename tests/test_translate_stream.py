"""``translate`` on inputs the model was not trained for, on long inputs, and interactively: one output
line per input line whatever the line (empty, control characters only, a script the vocabulary does
not cover, longer than the model's positions); chunked output that a killed run's ``--resume``
completes without redoing it; a process that answers each line before the next is sent; the
ahead-of-time program cache."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tiny_package import LIMIT, make_tiny_package

from jax_namnmt import aot, decoding, inference, segment, translate
from jax_namnmt.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
HANG = 600  # seconds: a guard against a hung child process, not a timing limit


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("tinypkg") / "pkg")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The compile and ahead-of-time caches of the module's child processes (compiled once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model(package, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_NAMNMT_XLA_CACHE", str(cache))  # the programs compiled here serve the child processes
        yield inference.load_model(package)


def translator(model, policy="split", warnings=None):
    return inference.Translator(model, "de", "en", policy, where="in.txt",
                                warn=(warnings.append if warnings is not None else lambda _: None))


SENTENCES = [f"Ein Mann mit {w} Hut fährt Fahrrad." for w in ("rotem", "blauem", "grünem", "gelbem", "weißem",
                                                                 "schwarzem", "großem", "kleinem")]

# -- pure functions -----------------------------------------------------------------------------


def test_split_sentences_and_pack():
    assert segment.split_sentences("Ein Hund. Zwei Katzen! Drei? «Vier.» Fünf") == [
        "Ein Hund.", "Zwei Katzen!", "Drei?", "«Vier.»", "Fünf"]
    assert segment.split_sentences("猫が寝る。犬が走る。") == ["猫が寝る。", "犬が走る。"]
    assert segment.split_sentences("no end at all") == ["no end at all"]
    assert segment.pack([3, 4, 5, 40, 1, 1], 10) == [[0, 1], [2], [3], [4, 5]]
    for lengths in ([1] * 25, [7, 3, 9, 1, 10, 2], [11, 11, 11]):
        groups = segment.pack(lengths, 10)
        assert [i for g in groups for i in g] == list(range(len(lengths)))  # all, once, in order
        assert all(sum(lengths[i] for i in g) <= 10 or len(g) == 1 for g in groups)


def test_plan_line_policies():
    sentences = [list(range(8))] * 5  # 40 tokens in 5 sentences, limit 20
    split = segment.plan_line(sentences, 20, "split")
    assert split.split and split.truncated == 0 and [len(p) for p in split.pieces] == [16, 16, 8]
    cut = segment.plan_line([list(range(40))], 20, "truncate")
    assert cut.pieces == (tuple(range(20)),) and cut.truncated == 20 and cut.tokens == 40
    one_long = segment.plan_line([list(range(5)), list(range(30))], 20, "split")
    assert [len(p) for p in one_long.pieces] == [5, 20] and one_long.truncated == 10
    assert segment.plan_line([list(range(40))], 20, "error").tokens == 40  # the caller refuses it
    assert segment.plan_line([[1, 2]], 20, "split") == segment.Plan(((1, 2),), 2, 0, False)


def test_output_lines_hold_no_line_break():
    text = "a\rb\nc\x0bd\x0ce\x1cf\x85g\u2028h\u2029i"
    assert segment.one_line(text) == "a b c d e f g h i"
    assert (segment.one_line(text) + "\n").splitlines() == [segment.one_line(text)]
    assert segment.clean_line("\x00\x1b\t") .strip() == ""


def test_completed_lines_cuts_a_partial_line(tmp_path):
    out = tmp_path / "out.txt"
    out.write_bytes("eins\nzwei\ndrei halb".encode())
    assert translate.completed_lines(out) == 2 and out.read_bytes() == b"eins\nzwei\n"
    assert translate.completed_lines(tmp_path / "missing.txt") == 0


def test_bucket_shapes():
    assert decoding.bucket_shape(1, 9, 16) == (1, 32)
    assert decoding.bucket_shape(3, 32, 16) == (4, 32) and decoding.bucket_shape(5, 33, 16) == (8, 64)
    assert decoding.bucket_shape(40, 12, 16) == (16, 32)


def test_program_sources_cover_the_search_modules():
    """The ahead-of-time cache key hashes ``decoding.PROGRAM_SOURCES``: every module of the package
    that building the search imports must be in it (a fresh interpreter, so nothing else is loaded)."""
    code = ("import sys, jax_namnmt.config, jax_namnmt.model.transformer, jax_namnmt.model.beam_search\n"
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('jax_namnmt')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    covered = {str(p.resolve()) for p in aot.source_files(decoding.PROGRAM_SOURCES)}
    loaded = {str(Path(f).resolve()) for f in proc.stdout.split()}
    assert loaded and loaded <= covered, sorted(loaded - covered)


# -- the translator on a tiny model -------------------------------------------------------------


def test_every_line_gives_one_line(model):
    warnings = []
    long_line = " ".join(SENTENCES * 2)
    lines = ["", "   ", "\x00\x1b\x07", "\t\r", "ภาษาไทย", SENTENCES[0], "Hut\u2028mit\x85Mann", long_line, SENTENCES[1]]
    out = translator(model, warnings=warnings).translate(lines, first_number=1)
    assert len(out) == len(lines)
    assert out[:4] == ["", "", "", ""]
    assert out[4] == "ภาษาไทย" and any(w.startswith("in.txt:5: no piece of the vocabulary") for w in warnings)
    assert all(o.strip() for o in out[5:])
    assert all("\n" not in o and len((o + "\n").splitlines()) == 1 for o in out)
    # never shifted: each line translates as it does alone
    t = translator(model)
    for k in (5, 6, 8):
        assert t.translate([lines[k]]) == [out[k]]


def test_a_long_line_is_its_sentence_groups_translated(model):
    vocab = model.vocab
    long_line = " ".join(SENTENCES * 2)
    assert len(vocab.encode(long_line)) > LIMIT
    t = translator(model)
    lengths = [len(ids) for ids in vocab.encode_batch(SENTENCES * 2)]
    groups = segment.pack(lengths, LIMIT)
    assert len(groups) > 2
    expected = " ".join(t.translate([" ".join((SENTENCES * 2)[i] for i in g) for g in groups]))
    assert t.translate([long_line]) == [expected]


def test_truncate_and_error_policies_name_the_line(model):
    warnings = []
    long_line = " ".join(["Hund"] * 100)  # no sentence end: split cuts it too
    for policy in ("split", "truncate"):
        t = translator(model, policy, warnings)
        out = t.translate(["Ein Hund.", long_line, long_line + " Katze Maus Baum"], first_number=7)
        assert out[1] == out[2]  # everything after the first LIMIT tokens is cut
        assert any(w.startswith("in.txt:8: 100 subword tokens") and "cut" in w for w in warnings)
    with pytest.raises(DataError, match=r"in.txt:2: 100 subword tokens, longer than the 30"):
        translator(model, "error").translate(["Ein Hund.", long_line])
    assert translator(model, "error").translate(["Ein Hund."])[0]


def test_translator_with_int8_weights(model):
    """``--weights int8`` (``inference.with_search``): the translator converts the parameters once,
    the model keeps its float32 ones, and each line gives the translation of the int8 search."""
    import dataclasses

    import numpy as np

    from jax_namnmt.decoding import translate_ids

    before = model.params["embed"]["embedding"]
    low = inference.with_search(dataclasses.replace(model), weights="int8")
    t = translator(low)
    assert t.params["embed"]["embedding"].dtype == np.int8 and model.params["embed"]["embedding"] is before
    out = t.translate(SENTENCES[:3])
    sources = [np.asarray((t.tag, *ids, 3), np.int32) for ids in model.vocab.encode_batch(SENTENCES[:3])]
    ids = translate_ids(model.params, model.config.model, None, sources, np.full(3, t.pair, np.int32),
                        low.config.decode, bucket=True)
    assert out == model.vocab.decode_batch(ids)  # the same search as translate_ids with decode.weights int8
    with pytest.raises(ConfigError, match="--weights = 'int4'"):
        inference.with_search(dataclasses.replace(model), weights="int4")


def test_resume_refuses_other_settings(package, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in.txt"
    src.write_text("Ein Hund.\nZwei Katzen.\n")
    out = tmp_path / "out.txt"
    monkeypatch.setenv("JAX_NAMNMT_XLA_CACHE", "off")
    argv = ["translate", "--checkpoint", str(package), "--src", "de", "--tgt", "en", "--input", str(src),
            "--output", str(out), "--quiet"]
    out.write_text("A dog.\n")
    state = {"checkpoint": str(package.resolve()), "src": "de", "tgt": "fr", "beam": 1, "lenpen": 0.6,
             "long_lines": "split", "input": str(src)}
    Path(f"{out}{translate.STATE_SUFFIX}").write_text(json.dumps(state))
    monkeypatch.setattr(sys, "argv", argv + ["--resume"])
    with pytest.raises(DataError, match=r"other settings \(tgt: fr, now en\)"):
        translate.main()
    monkeypatch.setattr(sys, "argv", argv)  # without --resume: starts again
    assert translate.main() == 0
    assert len(out.read_text().splitlines()) == 2 and not Path(f"{out}{translate.STATE_SUFFIX}").exists()


# -- real processes -----------------------------------------------------------------------------


def _env(cache: Path) -> dict:
    return dict(os.environ, JAX_NAMNMT_XLA_CACHE=str(cache), PYTHONPATH=str(REPO))


def _cmd(package: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jax_namnmt.translate", "--checkpoint", str(package), "--src", "de", "--tgt",
            "en", "--quiet", *extra]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.mark.slow
def test_killed_run_is_completed_by_resume_not_redone(package, cache, tmp_path):
    lines = [f"{SENTENCES[i % 8]} Nummer {i}." if i % 9 else "" for i in range(120)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ref = tmp_path / "ref.txt"
    proc = subprocess.run(_cmd(package, "--input", str(src), "--output", str(ref), "--chunk-lines", "16"),
                          env=_env(cache), cwd=tmp_path, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    assert len(_lines(ref)) == 120 and aot.SUBDIR in os.listdir(cache)
    # the run to kill reads a FIFO: it cannot finish before it is killed, and holds 3 chunks by then
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.txt"
    child = subprocess.Popen(_cmd(package, "--input", str(fifo), "--output", str(out), "--chunk-lines", "16"),
                             env=_env(cache), cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        with open(fifo, "w", encoding="utf-8") as writer:
            writer.write("\n".join(lines[:50]) + "\n")
            writer.flush()
            deadline = time.monotonic() + HANG
            while not (out.exists() and out.read_bytes().count(b"\n") >= 48):
                assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()
                time.sleep(0.05)
            child.send_signal(signal.SIGKILL)
            child.wait(HANG)
    finally:
        if child.poll() is None:
            child.kill()
    assert _lines(out) == _lines(ref)[:48]
    assert Path(f"{out}{translate.STATE_SUFFIX}").exists()
    kept = _lines(out)
    kept[1] = "SENTINEL"  # a line the resumed run must keep, not translate again
    out.write_text("\n".join(kept) + "\n" + "half a li", encoding="utf-8")  # and a partial last line
    proc = subprocess.run(_cmd(package, "--input", str(src), "--output", str(out), "--chunk-lines", "16",
                               "--resume"), env=_env(cache), cwd=tmp_path, capture_output=True, text=True,
                          timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    done = _lines(out)
    assert len(done) == 120 and done[1] == "SENTINEL"
    assert done[:1] + done[2:] == _lines(ref)[:1] + _lines(ref)[2:]
    assert not Path(f"{out}{translate.STATE_SUFFIX}").exists()


def _readline(stream, timeout: float = HANG) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no answer"
    return stream.readline().decode("utf-8")


@pytest.mark.slow
def test_interactive_answers_each_line_before_the_next(package, model, cache, tmp_path):
    expected = translator(model).translate(["Zwei Hunde spielen im Schnee.", "", "Ein Mann fährt Fahrrad."])
    child = subprocess.Popen(_cmd(package, "--interactive"), env=_env(cache), cwd=tmp_path,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line, want in zip(["Zwei Hunde spielen im Schnee.", "", "Ein Mann fährt Fahrrad."], expected):
            child.stdin.write((line + "\n").encode())
            child.stdin.flush()
            assert _readline(child.stdout) == want + "\n"  # answered while stdin is still open
        child.stdin.close()
        assert child.wait(HANG) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.slow
def test_serve_answers_http_requests(package, model, cache, tmp_path):
    lines = ["Zwei Hunde spielen im Schnee.", "", "Ein Mann fährt Fahrrad."]
    expected = translator(model).translate(lines)
    child = subprocess.Popen(_cmd(package, "--serve", "0"), env=_env(cache), cwd=tmp_path,
                             stderr=subprocess.PIPE)
    try:
        banner = _readline(child.stderr)
        while "serving" not in banner:
            banner = _readline(child.stderr)
        url = re.search(r"http://\S+", banner).group(0)
        for _ in range(2):  # the model stays loaded between requests
            request = urllib.request.Request(url, data="\n".join(lines).encode(), method="POST")
            with urllib.request.urlopen(request, timeout=HANG) as reply:
                assert reply.read().decode().split("\n")[:-1] == expected
    finally:
        child.terminate()
        child.wait(HANG)
