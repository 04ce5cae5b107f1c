"""Read the text, JSON and JSONL files users give, with one-line errors.

Every document and prompt path of ``fi-measure`` and ``fi-bench`` reads its
file through this module, so one contract holds for all of them:

* Text is UTF-8. A byte-order mark is accepted and dropped (``utf-8-sig``).
  Anything else (Latin-1, UTF-16, a binary file) is refused with the file,
  the byte offset of the first bad byte and the fix.
* NUL and the other control characters (C0 and C1, U+0000-U+001F and
  U+007F-U+009F) except tab, newline and carriage return are refused with
  their byte offset: they mean a binary or mis-encoded file, and a tokenizer
  would silently turn them into tokens.
* A file that vanishes or cannot be read part-way is one line too.
* ``.txt`` and ``.jsonl`` are read as a stream, line by line: a caller that
  stops early (``--max-docs``, ``--n-samples``) never reads the rest, and
  errors beyond that point are not seen.
* ``.json`` is parsed whole, so a file above :data:`MAX_JSON_BYTES` is
  refused with the advice to convert it to JSONL.

>>> find_control("tab\\tand newline\\n are fine")
>>> find_control("a NUL\\x00 is not")
(5, 0)
>>> human_bytes(256 * 2**20), human_bytes(1536)
('256 MiB', '1.5 KiB')
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from forward_influence.errors import InputError

#: Largest ``.json`` file read (it is parsed whole, so it is held in memory
#: about three times over); larger inputs belong in JSONL, which is streamed.
MAX_JSON_BYTES = 256 * 2**20

BOM = b"\xef\xbb\xbf"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_REREAD = "check that it is still there and readable, then rerun"


def human_bytes(n: int) -> str:
    """``n`` bytes in B / KiB / MiB / GiB, at most one decimal."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"


def find_control(text: str) -> tuple[int, int] | None:
    """``(character index, code point)`` of the first forbidden control character, or None."""
    m = _CONTROL.search(text)
    return None if m is None else (m.start(), ord(m.group()))


def control_message(code: int, where: str) -> str:
    """The refusal of control character ``code`` found ``where`` (``"at byte 12"``), naming the fix."""
    if code == 0:
        return f"NUL character {where} (a binary or UTF-16 file?); give UTF-8 text without NULs"
    return f"control character U+{code:04X} {where}; only tab, newline and carriage return are allowed: remove it"


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path} not found; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory; give a file") from None
    except OSError as e:
        raise InputError(f"{path} cannot be opened ({e.strerror or e}); {_REREAD}") from None


def _decode(path: Path, raw: bytes, offset: int) -> str:
    """``raw`` (found at byte ``offset`` of ``path``) as checked UTF-8 text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        source = "utf-16" if at == 0 and raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"  # UTF-16's byte-order mark
        raise InputError(
            f"{path}: not UTF-8 at byte {at} (0x{raw[e.start]:02x}, {e.reason}); "
            f"re-save it as UTF-8 (e.g. `iconv -f {source} -t utf-8 IN > OUT`)"
        ) from None
    found = find_control(text)
    if found is not None:
        at = offset + len(text[: found[0]].encode("utf-8"))
        raise InputError(f"{path}: {control_message(found[1], f'at byte {at}')}")
    return text


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Lines of a UTF-8 text file as ``(line number, text with its newline)``, streamed.

    Raises
    ------
    InputError
        Missing or unreadable file, bytes that are not UTF-8, control characters.
    """
    path = Path(path)
    offset = 0
    with _open(path) as f:
        lines = iter(f)
        lineno = 0
        while True:
            try:
                raw = next(lines, None)
            except OSError as e:
                raise InputError(f"{path}: read failed at byte {offset} ({e.strerror or e}); {_REREAD}") from None
            if raw is None:
                return
            lineno += 1
            skip = len(BOM) if lineno == 1 and raw.startswith(BOM) else 0
            text = _decode(path, raw[skip:], offset + skip)
            offset += len(raw)
            yield lineno, text


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file, read as a stream and checked (see :func:`iter_lines`)."""
    return "".join(line for _, line in iter_lines(path))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of a JSONL file, streamed."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: line {lineno} is not valid JSON ({e.msg}); fix the file or give one JSON object per line"
            ) from None


def read_json(path: str | Path) -> Any:
    """The value in a ``.json`` file of at most :data:`MAX_JSON_BYTES`.

    Raises
    ------
    InputError
        Missing, unreadable or too large file; not UTF-8; control characters; malformed JSON.
    """
    path = Path(path)
    limit = MAX_JSON_BYTES
    with _open(path) as f:
        try:
            raw = f.read(limit + 1)
        except OSError as e:
            raise InputError(f"{path}: read failed ({e.strerror or e}); {_REREAD}") from None
    if len(raw) > limit:
        size = path.stat().st_size if path.exists() else len(raw)
        raise InputError(
            f"{path} is {human_bytes(size)}, above the {human_bytes(limit)} limit for .json (read whole into memory); "
            "convert it to JSONL, one object per line (read as a stream)"
        )
    skip = len(BOM) if raw.startswith(BOM) else 0
    text = _decode(path, raw[skip:], skip)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); fix the file or save it as JSONL"
        ) from None
