"""Benchmark records on disk: CSV (spreadsheet-safe cells) and JSON, written atomically and read back
with every field's type checked, and the reference run shipped in the package's ``data/``."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from gemma_widgets.bench.result import Result
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.files import READ_LIMIT, read_limited, write_atomic
from gemma_widgets.host.hardware import Machine

_FIELDS = [f for f in dataclasses.fields(Result) if f.name != "machine"]


_MACHINE_FIELDS = dataclasses.fields(Machine)


def save(results: Sequence[Result], path: str | os.PathLike) -> Path:
    """Write ``results`` to ``path`` atomically: ``.json`` (one document) or ``.csv`` (a row per variant)."""
    path = Path(path)
    if path.suffix == ".json":
        return write_atomic(path, json.dumps({"results": [asdict(r) for r in results]}, indent=1))
    if path.suffix != ".csv":
        raise GemmaWidgetsError(f"Save results as .csv or .json, not {path.name!r}.")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([f.name for f in _FIELDS] + [f"machine.{f.name}" for f in _MACHINE_FIELDS])
    for r in results:
        row = [_csv_cell(getattr(r, f.name)) for f in _FIELDS]
        row += [_csv_cell(getattr(r.machine, f.name)) if r.machine else "" for f in _MACHINE_FIELDS]
        writer.writerow(row)
    return write_atomic(path, text.getvalue())


#: A spreadsheet reads a cell that starts with one of these as a formula (OWASP's CSV injection list);
#: such text cells are written with a leading ``'``, which :func:`load` removes again.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    elif not isinstance(value, str):
        return str(value)  # a number: "-1.5" stays a number
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _from_cell(text: str, hint: Any) -> Any:
    """A CSV cell back to the type in ``hint`` (``float | None``, ``list[str]``...)."""
    options = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    origin = {typing.get_origin(o) or o for o in options}
    if text == "" and type(None) in options:
        return None
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        text = text[1:]  # written so that a spreadsheet shows it as text
    if origin & {list, dict}:
        return json.loads(text)
    if bool in options:
        if text not in ("True", "False"):
            raise ValueError(f"{text!r} is not True or False")
        return text == "True"
    if int in options:
        return int(text)
    if float in options:
        return float(text)
    return text


def load(path: str | os.PathLike) -> list[Result]:
    """Read results saved by :func:`save` (CSV or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise GemmaWidgetsError(f"No results file at {path}. Save one with bench.save() or --out.")
    if path.suffix not in (".json", ".csv"):
        raise GemmaWidgetsError(f"Results files are .csv or .json, not {path.name!r}.")
    data = read_limited(path)  # at most READ_LIMIT bytes: a clear error, not all of memory
    try:
        if path.suffix == ".json":
            return [_result_from_dict(d) for d in json.loads(data)["results"]]
        return _load_csv(data.decode("utf-8"))
    # RecursionError: lists nested thousands deep, in the file or in a CSV cell's JSON
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, csv.Error) as exc:
        raise GemmaWidgetsError(f"{path} is not a results file written by bench.save(): {exc}") from exc


def _result_from_dict(data: dict[str, Any]) -> Result:
    machine = data.pop("machine", None)
    result = Result(**data, machine=Machine(**machine) if machine else None)
    _check_types(result)
    return result


def _check_types(record: Any) -> None:
    """Raise ``TypeError`` if a field of ``record`` does not hold what its type hint says."""
    for name, hint in typing.get_type_hints(type(record)).items():
        value = getattr(record, name)
        options = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        kinds = tuple(typing.get_origin(o) or o for o in options)
        if float in kinds:
            kinds += (int,)
        items = [value]
        if isinstance(value, list):  # list[float], list[str]: check the items against the item type
            (item,) = typing.get_args(next(o for o in options if typing.get_origin(o) is list))
            kinds, items = (item, int) if item is float else (item,), value
        for item in items:
            if isinstance(item, bool) and bool not in kinds or not isinstance(item, kinds):
                raise TypeError(f"{name} holds {item!r}, not {hint}")
            if isinstance(item, float) and not math.isfinite(item):
                raise TypeError(f"{name} holds {item!r}, not a finite number")
    if getattr(record, "machine", None) is not None:
        _check_types(record.machine)


def _load_csv(text: str) -> list[Result]:
    hints = typing.get_type_hints(Result)
    machine_hints = typing.get_type_hints(Machine)
    # csv's default cap (128 KiB a cell) refuses a long generated ``text`` that save() wrote; the
    # whole file is at most READ_LIMIT, so no cell can be larger than that
    csv.field_size_limit(max(csv.field_size_limit(), READ_LIMIT))
    results = []
    with io.StringIO(text, newline="") as handle:
        for row in csv.DictReader(handle):
            # a file from an older version lacks the newer columns: those keep their defaults
            data = {f.name: _from_cell(row[f.name], hints[f.name]) for f in _FIELDS if f.name in row}
            machine = None
            if row.get("machine.cpu"):
                machine = Machine(**{f.name: _from_cell(row[f"machine.{f.name}"], machine_hints[f.name])
                                     for f in _MACHINE_FIELDS})
            results.append(Result(**data, machine=machine))
            _check_types(results[-1])
    return results


#: The run shipped with the package: the bundled model, every CPU variant, on a 2-vCPU AMD EPYC with 25 GB.
REFERENCE_RUN = "reference-cpu.json"


def reference_run(name: str = REFERENCE_RUN) -> list[Result]:
    """The results saved in the package's ``data/`` folder (found through importlib.resources, so it
    works where the kit is pip-installed, as on Colab): a run from another machine to compare with."""
    with as_file(files("gemma_widgets") / "data" / name) as path:
        return load(path)
