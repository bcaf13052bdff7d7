"""Reports: per-case records streamed to JSON lines as a run goes, so that an interrupted run resumes.

``CaseLog`` opens ``cases.jsonl`` for appending, drops a torn last line left by a crash, knows which
case ids are done, and writes each new record with flush + fsync so that a case is either in the file
whole or not at all. Summaries are computed from the file's records, never from in-memory state.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)


class CaseLog:
    """Append-only JSON-lines log of finished cases, keyed by ``key`` (default ``case_id``)."""

    def __init__(self, path: str | Path, key: str = "case_id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = list(self._read_and_repair())
        self.done = {r[key] for r in self.records}

    def _read_and_repair(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        records = []
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn write from an interrupted run: dropped below
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_end += len(line)
        if good_end < len(data):
            log.warning("%s: dropping %d bytes of an unfinished record", self.path, len(data) - good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        seen = set()
        for r in records:
            if r.get(self.key) in seen:  # cannot happen with this writer; guard against hand edits
                continue
            seen.add(r.get(self.key))
            yield r

    def write(self, record: dict[str, Any]) -> None:
        k = record[self.key]
        if k in self.done:
            raise ValueError(f"case {k!r} is already in {self.path}")
        line = json.dumps(record, ensure_ascii=False, default=_plain) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(k)


def run_settings(hparams: Any) -> dict[str, Any]:
    """The hyper-parameters a run records and compares on resuming: all but those marked speed-only
    (``metadata["speed_only"]``: they change how fast, not what, a method computes)."""
    from dataclasses import asdict, fields, is_dataclass

    if not is_dataclass(hparams):
        return dict(hparams)
    fast = {f.name for f in fields(hparams) if f.metadata.get("speed_only")}
    return {k: v for k, v in asdict(hparams).items() if k not in fast}


def settings_before(hparams: Any) -> dict[str, Any]:
    """For a hyper-parameter dataclass (or instance): what a run made before each field existed did — the
    field's default, or its ``metadata["before"]`` where the default is a new behaviour (``start_run``)."""
    from dataclasses import asdict, fields, is_dataclass

    if not is_dataclass(hparams):
        return {}
    cls = hparams if isinstance(hparams, type) else type(hparams)
    return {**asdict(cls()), **{f.name: f.metadata["before"] for f in fields(cls) if "before" in f.metadata}}


def start_run(out_dir: str | Path, run: dict[str, Any], defaults: dict[str, dict[str, Any]] | None = None) -> Path:
    """Create ``out_dir`` and its ``run.json``, or check that the run there has the same configuration,
    so that a resumed run never mixes results of two configurations. ``defaults``: for a key of ``run``
    holding settings ("hparams"), what each field meant before it existed (``settings_before``): a field
    the stored run lacks counts as the same when it is at that value — a setting added after the run
    began, whose default is what the code did before it, or that declares what it did as ``before``."""
    from modeledit.errors import ModelEditError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    if run_file.exists():
        before = json.loads(run_file.read_text())
        now = json.loads(json.dumps(run, default=_plain))
        for key, fields in json.loads(json.dumps(defaults or {}, default=_plain)).items():
            stored, current = before.get(key), now.get(key)
            if isinstance(stored, dict) and isinstance(current, dict):
                stored.update({f: v for f, v in current.items() if f not in stored and f in fields and fields[f] == v})
        changed = sorted(k for k in now if before.get(k) != now[k])
        if changed:
            raise ModelEditError(
                f"{out} holds a run with another configuration ({', '.join(changed)} differ; see {run_file}): "
                "resume it with the same settings, or choose another --out"
            )
    else:
        write_json(run_file, run)
    return out


def read_json_list(path: str | Path, what: str, example: str) -> list[Any]:
    """A data file holding a non-empty JSON list, or a DataError saying what was expected."""
    from modeledit.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no {what} file at {path}: pass --data with {example}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(records, list) or not records:
        raise DataError(f"{path} should hold a JSON list of {what} records")
    return records


def parse_records(path: str | Path, records: list[Any], parse: Any, what: str) -> list[Any]:
    """``parse(index, record)`` for each record; a record that does not parse is one DataError naming the
    file, the record and what was expected."""
    from modeledit.errors import DataError, ModelEditError

    out = []
    for i, rec in enumerate(records):
        try:
            out.append(parse(i, rec))
        except (KeyError, TypeError, IndexError) as exc:
            raise DataError(f"{path}: record {i} is not {what} (missing or bad {exc})") from exc
        except ModelEditError as exc:
            raise DataError(f"{path}: record {i}: {exc}") from exc
    return out


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_plain) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_tensors(path: str | Path, tensors: dict[str, Any], header: dict[str, Any]) -> Path:
    """Write tensors and a JSON header (safetensors metadata "modeledit") atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp),
              metadata={"modeledit": json.dumps(header, default=_plain)})
    tmp.replace(path)
    return path


def read_tensors(path: str | Path, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON header, tensors) of a file written by ``write_tensors``; a clear error for anything else."""
    from safetensors import safe_open

    from modeledit.errors import PatchError

    path = Path(path)
    if not path.is_file():
        raise PatchError(f"no {what} file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get("modeledit")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise PatchError(f"{path} is not a readable safetensors {what} file ({exc}); save it again") from exc
    if header is None:
        raise PatchError(f"{path} is a safetensors file but not a modeledit {what} (no 'modeledit' metadata)")
    try:
        return json.loads(header), tensors
    except json.JSONDecodeError as exc:
        raise PatchError(f"{path} is a damaged modeledit {what} ({exc}); save it again") from exc


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB: since the last ``reset_peak_rss`` where Linux allows
    resetting it, else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak-memory measurement (Linux: VmHWM := current RSS); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine() -> str:
    """What a benchmark's figures were measured on: cores, torch and its threads."""
    import torch

    return f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def cost_summary(seconds: Iterable[float]) -> dict[str, float]:
    s = list(seconds)
    return {
        "seconds_per_edit_median": statistics.median(s) if s else float("nan"),
        "seconds_per_edit_max": max(s) if s else float("nan"),
        "peak_rss_mb": peak_rss_mb(),
    }


def mean(xs: Iterable[float]) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")


def harmonic_mean(xs: Iterable[float]) -> float:
    xs = [float(x) for x in xs]
    if not xs or any(x != x for x in xs):
        return float("nan")
    if any(x <= 0 for x in xs):
        return 0.0
    return len(xs) / sum(1.0 / x for x in xs)


def _plain(x: Any) -> Any:
    if hasattr(x, "tolist"):  # tensors and numpy values, of any shape
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")
