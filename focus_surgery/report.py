"""Every report, rendered one way: the typed ``ConvertReport``, text and ``--json``, exit codes, one-line errors.

Values from files go through ``bounded`` (a node budget: a DAG of shared lists costs its budget, not its expansion)
and every text line through ``line`` (control characters escaped). Imports nothing above ``errors``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import FocusSurgeryError, VerificationFailed

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# What a conversion's float64 check proved, strongest first (``ConvertReport.proof``):
PROOF_MODEL = "model"  # the written file, loaded back as its users load it, run against the original in float64
PROOF_STEM = "stem"  # the changed stem run against the original stem in float64, every other tensor shown identical
PROOF_LAYOUT = "layout only"  # the stem check replays an assumed order / block size: not checkable from the weights
PROOFS = (PROOF_MODEL, PROOF_STEM, PROOF_LAYOUT)
PROOF_WORDS = {  # the summary line's words for each
    PROOF_MODEL: "verified (model proof)",
    PROOF_STEM: "stem proof (every other tensor identical)",
    PROOF_LAYOUT: "layout only (assumed order and block size, not checkable from the weights)",
}
MAX_NODES, MAX_DEPTH, MAX_CHARS = 20_000, 32, 4096  # per report: values visited, nesting, characters per string
MAX_LINE = 16_384  # characters of one printed line (an error message from a library included)


def bounded(value: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """A JSON-able copy of ``value`` within ``MAX_NODES`` values, ``MAX_DEPTH`` levels and ``MAX_CHARS`` per string:
    reports go by ``to_dict``, arrays of up to 64 values become lists, other objects ``<TypeName>`` (their ``str()``
    could expand what they hold); what passes a limit becomes ``"<...>"``."""
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        return "<...>"
    if value is None or isinstance(value, (bool, float)):
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, str):
        return value if len(value) <= MAX_CHARS else value[:MAX_CHARS] + "<...>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "to_dict"):
        return bounded(value.to_dict(), budget, depth + 1)
    if hasattr(value, "tolist") and hasattr(value, "shape"):  # torch / numpy values
        small = math.prod(value.shape) <= 64
        return bounded(value.tolist(), budget, depth + 1) if small else f"<array of shape {tuple(value.shape)}>"
    if isinstance(value, dict):
        items = [(k if isinstance(k, str) else str(bounded(k, budget, depth + 1)), v) for k, v in _some(value, budget)]
        return {k: bounded(v, budget, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [bounded(v, budget, depth + 1) for v in _some(value, budget)]
    return f"<{type(value).__name__}>"


def _some(items: Any, budget: list[int]) -> list:
    """The first entries of ``items`` that the budget can still visit (``dict``: its items)."""
    return list(itertools.islice(items.items() if isinstance(items, dict) else items, max(budget[0], 0)))


def line(text: Any) -> str:
    """``text`` as one printable line: newlines and control characters escaped, at most ``MAX_LINE`` characters."""
    text = str(text)
    text = text if len(text) <= MAX_LINE else text[:MAX_LINE] + "<...>"
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in text)


def one_line(error: BaseException) -> str:
    """An exception's message as one escaped line, else its type's name: ours whole (a path with a newline stays in
    its message), another library's first line (the rest is often a dump of the values involved)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return line(text if isinstance(error, FocusSurgeryError) else text.splitlines()[0])


def error_exit(error: BaseException, source: Any, dst: Any, written: str = "nothing was written") -> int:
    """Print the one-line message of a failed command on stderr; its exit code: 1 a failed check, else 2.

    ``source`` / ``dst``: the command's input and output, named where the error itself may not name them;
    ``written``: what a run stopped by memory or a signal had put in place (``atomic_io.describe_written``).
    """
    code = EXIT_VERIFY_FAILED if isinstance(error, VerificationFailed) else EXIT_BAD_INPUT
    where = f"{source}: " if str(source) else ""  # a message never shows an empty field
    if code == EXIT_VERIFY_FAILED:
        text = one_line(error)
    elif isinstance(error, MemoryError):
        text = f"error: {where}{one_line(error) if str(error) else 'ran out of memory'}; {written}"
    elif isinstance(error, (ValueError, OSError)):  # our errors and the library's: they name the file
        text = f"error: {one_line(error)}"
    elif isinstance(error, Exception):  # e.g. a model whose forward fails
        text = f"error: {where}{type(error).__name__}: {one_line(error)}"
    else:  # interrupted: Ctrl-C or a signal (atomic_io.Interrupted); inspect / verify / yolo have no output to name
        where = f"{dst}: " if str(dst) else ""
        text = f"{where}{'interrupted' if isinstance(error, KeyboardInterrupt) else error}; {written}"
    print(line(f"focus-surgery: {text}"), file=sys.stderr)
    return code


_REPORT_STREAM: list[Any] = []  # where reports go (stdout); with --json everything else printed goes to stderr


def emit(result: Any, as_json: bool, lines: list[str] | None = None, max_nodes: int = MAX_NODES) -> None:
    """Print one report: ``result`` as one bounded JSON object of ``max_nodes`` (more for a folder run or the
    benchmark), or ``lines`` (default ``result["summary"]``)."""
    if as_json:
        text = json.dumps(bounded(result, [max_nodes]))
    else:
        text = "\n".join(line(x) for x in (lines if lines is not None else result["summary"].split("\n")))
    print(text, file=_REPORT_STREAM[-1] if _REPORT_STREAM else sys.stdout)


@dataclass
class ConvertReport:
    """What one conversion found, did and measured: ``files.convert_file`` returns it, this module renders it.

    Attributes:
        src, dst, source, to, scope (str): Input and output files, the adapter that read the input (``state_dict``,
            ``yolov5``, ``onnx``, ...) and the options converted with.
        change (str): What changed, in words (``Focus -> Conv(6x6, stride 2)``); empty: from ``to`` and ``scope``.
        max_abs_err (float | None), proof (str | None): The float64 error measured and what it proved (``PROOFS``,
            decided by ``files.convert_file`` only); None when nothing was measured.
        problem (str | None): Why the float64 check failed; None when it passed or did not run.
        note (str): What the input is, when worth saying first; nothing_to_do (str): why the input already is what
            was asked (nothing is written); loads_into (str): the change the consumer's model needs to load it.
        details (list[str]), fields (dict): Further text lines; the adapter's own JSON fields (``kind``, ``stem``...).
        written (list[str]): Files written (set after the write).
        write, after: Not part of the report (``convert_file`` clears both): ``write(path)`` writes the result
            atomically; ``after`` is the source's handle on what it converted, for the proof of the written file.
    """

    src: str
    source: str
    to: str
    scope: str = "stem"
    change: str = ""
    max_abs_err: float | None = None
    proof: str | None = None
    problem: str | None = None
    note: str = ""
    nothing_to_do: str = ""
    loads_into: str = ""
    details: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    dst: str = ""
    written: list[str] = field(default_factory=list)
    write: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)
    after: Any = field(default=None, repr=False, compare=False)

    def lines(self) -> list[str]:
        """The text form, one fact per line."""
        if self.nothing_to_do:
            what = f" is {self.note.split(';')[0]}" if self.note else ""
            return [f"nothing to do: {self.src}{what}; {self.nothing_to_do}; {self.dst} not written"]
        change = self.change or f"stem to {self.to}{', scope all' if self.scope == 'all' else ''}"
        head = f"converted {self.src} -> {self.dst} ({change})"
        if self.max_abs_err is not None:  # "verified" only for a model proof; the weaker proofs say what they are
            head += f", {PROOF_WORDS.get(self.proof, 'checked in memory')}: max_abs_err={self.max_abs_err:.3e}"
        if self.note:
            head = f"{self.src} is {self.note.split(';')[0]}; {head}"
        tail = [f"  the result loads into the model after this change: {self.loads_into}"] if self.loads_into else []
        return [head, *self.details, *tail]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``src``, ``dst``, ``source``, ``to``, the adapter's fields, ``max_abs_err``, ``proof``,
        ``summary``."""
        out = {"src": self.src, "dst": self.dst, "source": self.source, "to": self.to, **self.fields}
        out.update(max_abs_err=self.max_abs_err, proof=self.proof)
        out.update({k: getattr(self, k) for k in ("note", "loads_into", "written") if getattr(self, k)})
        if self.nothing_to_do:
            out.update(nothing_to_do=self.nothing_to_do, written=[])
        out["summary"] = "\n".join(line(x) for x in self.lines())
        return out

    def __getitem__(self, key: str) -> Any:  # the JSON form's keys, as the dicts of earlier releases had them
        return self.to_dict()[key]


def folder_lines(summary: dict[str, Any]) -> list[str]:
    """The text form of a folder run: a count line, then one ``ok`` / ``FAIL`` line per file."""
    converted, failed = summary["converted"], summary["failed"]
    same = sum(1 for item in converted if item.get("nothing_to_do"))  # already what was asked: not written
    lines = [
        f"converted {len(converted) - same}, {f'nothing to do {same}, ' if same else ''}failed {len(failed)} "
        f"(of {len(converted) + len(failed)} files under {summary['src']})"
    ]
    for item in converted:
        err = item.get("max_abs_err")
        if item.get("nothing_to_do"):
            lines.append(f"  ok    {item['src']}: nothing to do ({item['nothing_to_do']}); not written")
        else:
            lines.append(
                f"  ok    {item['src']} -> {item['dst']}" + (f" (max_abs_err={err:.3e})" if err is not None else "")
            )
    lines += [f"  FAIL  {item['file']}: {item['reason']}" for item in failed]
    return lines
