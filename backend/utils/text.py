"""Reading numbers out of text fields, and writing JSON files atomically: one implementation each.

Pose CSVs (``1;0;0;...``), ground truth typed into the app (``800, 800, 500, 300``), threshold lists and SuperGlue
pair files all hold lists of numbers; :func:`parse_numbers` reads every one of them. Run folders, owner records and
pair caches are JSON files other processes read while they are written; :func:`write_json_atomic` writes them.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

_SEPARATORS = re.compile(r"[;,\s\[\]()]+")


def parse_numbers(text: str, what: str = "the field", where: str = "") -> np.ndarray:
    """The numbers of one text field, float64 [n], in order.

    Args:
        text: numbers separated by ``;``, ``,``, white space or brackets, in any mix (``"1;0;0"``,
            ``"800, 800 500"``, ``"[0.1, 0.2]"``).
            ``nan`` and ``inf`` are read as such: whether they mean "missing" is the caller's decision. An empty
            field gives an empty array.
        what: the field's name, for the message.
        where: where the field is (``"gt.csv:3"``), for the message.

    Raises:
        ValueError: a token that is not a number; the message is ``"{where}: {what}: '...' is not a number ..."``
            and quotes at most 40 characters of that token.
    """
    tokens = [tok for tok in _SEPARATORS.split(str(text).strip()) if tok]
    values = np.empty(len(tokens), dtype=np.float64)
    for i, tok in enumerate(tokens):
        try:
            values[i] = float(tok)
        except ValueError:
            at = f"{where}: " if where else ""
            raise ValueError(f"{at}{what}: {tok[:40]!r} is not a number (give numbers separated by ';', ',' or "
                             "spaces)") from None
    return values


def numpy_json(o: Any) -> Any:
    """JSON's ``default`` for what run records hold besides JSON types: numpy integers and floats as numbers,
    arrays as lists, anything else (paths) as its ``str``."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 1,
                      default: Callable[[Any], Any] | None = numpy_json) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file beside it and a rename, so that readers see the
    old file or the new one, never half of one. On any error (a full disk, data JSON cannot encode) the temporary
    file is removed and the error raised; ``path`` is then unchanged.

    Args:
        path: the destination; its folder must exist.
        data: anything :func:`json.dumps` encodes with ``default``.
        indent: as :func:`json.dumps`.
        default: as :func:`json.dumps`; :func:`numpy_json` by default.

    Raises:
        OSError: the folder is missing or not writable, or the disk is full.
        TypeError, ValueError: ``data`` cannot be encoded.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=indent, default=default))
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
