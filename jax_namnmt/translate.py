"""Translate text with a trained model: one output line per input line, in order.

    echo "Zwei Hunde spielen im Schnee." | python -m jax_namnmt.translate --src de --tgt en   # the shipped model
    python -m jax_namnmt.translate --checkpoint DIR --src de --tgt en --input FILE --output OUT [--resume]
    python -m jax_namnmt.translate --src de --tgt en --interactive     # a line in, its translation out, at once

The input is read and translated in chunks (``--chunk-lines``), each written (and flushed) as
soon as it is done, so memory does not grow with the input; with ``--output`` a run that was
stopped part-way is completed by the same command with ``--resume``. On a terminal, or with
``--interactive``, each line is translated and written as soon as it is read. ``--serve PORT``
keeps the model loaded behind a small local HTTP service instead (``POST /`` with lines of
text, one translated line back per line).
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

from jax_namnmt import cli, segment  # noqa: E402
from jax_namnmt.config import DECODE_WEIGHTS  # noqa: E402
from jax_namnmt.errors import DataError  # noqa: E402

STATE_SUFFIX = ".translate.json"  # beside --output while a run is unfinished: what --resume must match


def _parser():
    p = cli.parser("Translate with beam search", config=False)
    p.add_argument("--checkpoint", default=None,
                   help="a run directory or package (config, vocabulary, masks are in it); default: the shipped "
                        "Multi30k model (de, en, fr, cs)")
    p.add_argument("--src", required=True)
    p.add_argument("--tgt", required=True)
    p.add_argument("--input", default=None, help="input file (plain or .gz; default: stdin)")
    p.add_argument("--output", default=None, help="output file (default: stdout)")
    p.add_argument("--resume", action="store_true",
                   help="with --output: keep the lines an earlier, stopped run of the same command wrote and "
                        "translate only the rest")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the config's, 4)")
    p.add_argument("--lenpen", type=float, default=None, help="length penalty (default: the config's, 0.6)")
    p.add_argument("--weights", choices=DECODE_WEIGHTS, default=None,
                   help="precision of the model's matrices while decoding: float32, bfloat16 (1.5x the sentences/s "
                        "on a CPU with AVX512-BF16, BLEU -0.03 on Multi30k de-en) or int8 (1.4x, BLEU +0.12; a "
                        "quarter of the memory) (default: the config's, float32)")
    p.add_argument("--long-lines", choices=segment.LONG_LINE_POLICIES, default="split",
                   help="a line longer than the model was trained for: split at sentence ends (a sentence still "
                        "too long is cut, with a warning), truncate (with a warning) or error (default: split)")
    p.add_argument("--chunk-lines", type=int, default=1024, help="lines read and translated at a time (default 1024)")
    p.add_argument("--interactive", "--line-buffered", action="store_true",
                   help="translate and write each line as soon as it is read (the default when stdin is a terminal)")
    p.add_argument("--serve", type=int, default=None, metavar="PORT",
                   help="keep the model loaded and answer HTTP POSTs on 127.0.0.1:PORT (one line out per line in)")
    p.add_argument("--nbest", type=int, default=0, metavar="N",
                   help="write the N best translations of each line (at most the beam size), best first, one a "
                        "line as 'LINE ||| translation ||| F0= log-probability ||| score' (LINE counts input lines "
                        "from 0; Marian's and Moses' n-best format)")
    p.add_argument("--sampling", action="store_true",
                   help="draw each translation from the model's distribution instead of the beam search's best "
                        "(back-translation by sampling); a line's sample depends on --seed and its line number only")
    p.add_argument("--sampling-topk", type=int, default=0, metavar="K",
                   help="with --sampling: draw from the K most likely tokens at each step (default 0: all)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="with --sampling: divide the log-probabilities by this (default 1)")
    p.add_argument("--seed", type=int, default=0, help="with --sampling: the seed of the draws (default 0)")
    p.add_argument("--timings", action="store_true", help="print where the time went (JSON) to stderr at the end")
    return p


def nbest_lines(hypotheses, first_index: int) -> list[str]:
    """The n-best output lines of consecutive input lines, the first ``first_index`` (0-based)."""
    return [f"{first_index + k} ||| {h.text} ||| F0= {h.log_prob:.6f} ||| {h.score:.6f}"
            for k, entries in enumerate(hypotheses) for h in entries]


def _translated(translator, chunk: list[str], first_number: int, nbest: int, progress=None) -> list[str]:
    """The output lines of ``chunk`` (its first line is input line ``first_number``, 1-based)."""
    if nbest:
        return nbest_lines(translator.translate_nbest(chunk, nbest, first_number, progress), first_number - 1)
    return translator.translate(chunk, first_number, progress)


def main() -> int:
    args = _parser().parse_args()
    if args.chunk_lines < 1:
        raise DataError(f"--chunk-lines must be at least 1, got {args.chunk_lines}")
    if args.resume and not args.output:
        raise DataError("--resume needs --output: the lines already translated are read from that file")
    if args.nbest and (args.resume or args.serve is not None):
        raise DataError(f"--nbest does not go with {'--resume' if args.resume else '--serve'} (its output has "
                        "several lines per input line)")
    sampling = None
    if args.sampling:
        from jax_namnmt.config import SampleSearch

        if args.beam not in (None, 1):
            raise DataError(f"--beam {args.beam} does not go with --sampling (a sample a line, no beam)")

        sampling = SampleSearch(args.temperature, args.sampling_topk)
    elif args.sampling_topk or args.temperature != 1.0:
        raise DataError("--sampling-topk and --temperature go with --sampling")
    timings = {"start": time.perf_counter() - _START}  # the interpreter, imports, JAX (cli.run's cache set-up)
    mark = time.perf_counter()

    def lap(name):
        nonlocal mark
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - mark
        mark = now

    from jax_namnmt import inference, packaged

    lap("import_project")
    checkpoint = packaged.checkpoint_or_shipped(args.checkpoint)
    model = inference.with_search(inference.load_model(Path(checkpoint)), args.beam, args.lenpen, args.weights)
    lap("load_model")
    translator = inference.Translator(model, args.src, args.tgt, args.long_lines, where=args.input or "stdin",
                                      sampling=sampling, seed=args.seed)
    if args.nbest:  # before the output file is opened
        inference.check_nbest(args.nbest, model.config.decode.beam_size, sampling)
    if not args.quiet:
        for note in translator.notes:
            print(f"note: {note}", file=sys.stderr)
    if args.serve is not None:
        from jax_namnmt.serve import serve

        return serve(translator, args.serve)
    interactive = args.interactive or (args.input is None and _isatty(sys.stdin))
    if interactive:
        _interactive(translator, args.output, args.nbest)
    else:
        _batch(translator, args, Path(checkpoint))
    lap("translate")
    if args.timings:
        timings.update(program=translator.stats.get("program_s", 0.0), aot=translator.stats.get("aot", "none"),
                       total=time.perf_counter() - _START)
        print(json.dumps({"timings": {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()}}),
              file=sys.stderr)
    return 0


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- reading ---------------------------------------------------------------------------------------

def _open_input(path: str | None):
    if path is None:
        return sys.stdin.buffer
    p = Path(path)
    try:
        return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read the file ({e})") from None


def read_lines(stream, where: str) -> Iterator[str]:
    """Lines of a binary stream, split on LF only (one CR before it removed), as they arrive;
    invalid UTF-8 is a DataError naming the line."""
    number = 0
    try:
        for raw in iter(stream.readline, b""):
            number += 1
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}:{number}: invalid UTF-8 byte 0x{raw[e.start]:02x}; convert the input to "
                                "UTF-8 (e.g. iconv -f LATIN1 -t UTF-8) or fix that line") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{where}: cannot read the file after line {number} ({e}); if it is gzipped check "
                        "that it is complete (gzip -t)") from None


def count_lines(path: str) -> int | None:
    """Lines of a regular file (for the progress bar), None for anything else."""
    p = Path(path)
    if not p.is_file():
        return None
    count, last = 0, b"\n"
    with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- writing, resuming -----------------------------------------------------------------------------

def completed_lines(path: Path) -> int:
    """Complete lines (ending in LF) of an earlier run's output; a partial last line (a run killed
    while writing) is cut off the file."""
    if not path.exists():
        return 0
    count, size, end = 0, path.stat().st_size, 0
    with open(path, "rb") as f:
        offset = 0
        for block in iter(lambda: f.read(1 << 20), b""):
            n = block.count(b"\n")
            if n:
                count += n
                end = offset + block.rindex(b"\n") + 1
            offset += len(block)
    if end != size:
        with open(path, "r+b") as f:
            f.truncate(end)
    return count


def _state(translator, checkpoint: Path, args) -> dict:
    config = translator.model.config
    return {"checkpoint": str(checkpoint.resolve()), "src": args.src, "tgt": args.tgt,
            "beam": config.decode.beam_size, "lenpen": config.decode.length_penalty, "weights": config.decode.weights,
            "long_lines": args.long_lines, "input": str(Path(args.input).resolve()) if args.input else "stdin",
            "sampling": [args.temperature, args.sampling_topk, args.seed] if args.sampling else None}


def _batch(translator, args, checkpoint: Path) -> None:
    state_path = Path(f"{args.output}{STATE_SUFFIX}") if args.output else None
    done = 0
    if args.output:
        out_path = Path(args.output)
        state = _state(translator, checkpoint, args)
        if args.resume:
            if state_path.exists():
                from jax_namnmt.jsonfile import load_json

                before = load_json(state_path)
                before.setdefault("weights", "float32")  # written before --weights existed
                before.setdefault("sampling", None)  # written before --sampling existed
                # an `error` run wrote no long line: any --long-lines may go on from where it stopped
                changed = [k for k in state if k != "input" and before.get(k) != state[k]
                           and not (k == "long_lines" and before.get(k) == "error")]
                if changed:
                    raise DataError(f"{out_path} was written with other settings "
                                    f"({', '.join(f'{k}: {before.get(k)}, now {state[k]}' for k in changed)}); "
                                    "rerun with those, or without --resume to start again")
            done = completed_lines(out_path)
        state_path.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        out = open(out_path, "a" if args.resume else "w", encoding="utf-8", newline="\n")
    else:
        out = _stdout()
    progress = None
    if not args.quiet and (args.output or _isatty(sys.stderr)):
        from tqdm.auto import tqdm

        total = count_lines(args.input) if args.input else None
        progress = tqdm(total=total, initial=min(done, total or done), unit="line",
                        desc=f"translate {args.src}-{args.tgt}", file=sys.stderr, dynamic_ncols=True)
    stream = _open_input(args.input)
    where = args.input or "stdin"
    read = 0
    try:
        lines = read_lines(stream, where)
        for _ in range(done):  # what an earlier run translated already
            if next(lines, None) is None:
                raise DataError(f"{args.output} has {done} lines but {where} only {read}: it is not the output "
                                "of this input; rerun without --resume")
            read += 1
        for chunk in _chunks(lines, args.chunk_lines):
            out.write("".join(line + "\n" for line in _translated(translator, chunk, read + 1, args.nbest, progress)))
            out.flush()
            read += len(chunk)
    except KeyboardInterrupt:
        if args.output:
            print(f"interrupted: {read} lines written to {args.output}; the same command with --resume "
                  "translates the rest", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if progress is not None:
            progress.close()
        if stream is not sys.stdin.buffer:
            stream.close()
        if args.output:
            out.close()
        else:
            out.detach()
    if state_path is not None:
        state_path.unlink(missing_ok=True)


def _stdout():
    """UTF-8 text over stdout's bytes, whatever the locale; ``detach()`` it when done."""
    sys.stdout.flush()
    return io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n", write_through=True)


def _interactive(translator, output: str | None, nbest: int = 0) -> None:
    out = open(output, "w", encoding="utf-8", newline="\n") if output else _stdout()
    try:
        for number, line in enumerate(read_lines(sys.stdin.buffer, "stdin"), 1):
            out.write("".join(text + "\n" for text in _translated(translator, [line], number, nbest)))
            out.flush()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        if output:
            out.close()
        else:
            out.detach()


if __name__ == "__main__":
    cli.run(main)
