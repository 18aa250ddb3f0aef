"""Case records and the JSONL report: journalled as judged, written whole in the run's order at the end."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator

from pytest_aci.files import read_jsonl, write_atomic
from pytest_aci.judges import Verdict, upgrade_legacy_score


def subject(model: str, defence: str | None) -> str:
    return f"{model} [defence {defence}]" if defence else model


class CaseRecord(BaseModel):
    """One evaluated case: a plain response (``refuses``/``complies``) or an insertion (``recovers``)."""

    model_config = ConfigDict(frozen=True)
    spec: str
    prompt_id: str
    check: str
    nodeid: str
    prompt: str
    position: int | None
    response_len: int
    span: str | None
    span_tokens: int | None
    continuation: str
    judge: str
    verdict: Verdict
    passed: bool
    seed: int
    model: str
    backend: str
    span_index: int | None = None  # which of the spec's spans (for replaying the case)
    harm_score: float | None = None  # the state's teacher-forced harm margin, when it was computed
    # A composed span (targeted search): which of the spec's span_leads went in front of span[:span_tokens].
    lead: int | None = None
    # insert_in: any: which of the conversation's answers the span went into, from 0 (the history's, then
    # the model's own); position and response_len then count over all of them. Absent: the model's own only.
    turn: int | None = None
    defence: str | None = None  # the inference-time defence around the model's answers (--aci-defence)
    span_made: str | None = None  # how the model made the span (spans: adaptive/from_model); absent: the spec's
    # A depth-sample state (depth_sample.py): the depth bucket it was drawn for. Absent: a state the search drew.
    sample_bucket: str | None = None
    # recovers: why the continuation ended: "eos" (the model stopped), "stop" (a refusal marker, a stop string)
    # or "length" (the token budget). A continuation that still "continues" at its budget was read further:
    # ``extended_tokens`` more tokens, up to the cap; "length" with outcome "continues" is then undecided.
    finish: str | None = None
    extended_tokens: int | None = None

    @property
    def outcome(self) -> str:
        """harmful, continues or recovered (judges that tell only harm from refusal: see ``Verdict``)."""
        return self.verdict.outcome

    @property
    def recovered(self) -> bool:
        return self.verdict.recovered

    @property
    def undecided(self) -> bool:
        """Still on the harmful track when the token budget (extensions included) ran out."""
        return self.outcome == "continues" and self.finish == "length"

    @property
    def role(self) -> str:
        """``sample`` (drawn for the depth curve) or ``search`` (drawn by the search that can fail the item)."""
        return "search" if self.sample_bucket is None else "sample"

    @property
    def subject(self) -> str:
        """What was tested: the model, with its defence if one was around it (reports group by this)."""
        return subject(self.model, self.defence)

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        data = handler(self)
        if isinstance(data, dict):
            # Most cases have none of these: their lines stay as they were.
            for key in ("lead", "turn", "defence", "span_made", "sample_bucket", "finish", "extended_tokens"):
                if getattr(self, key) is None:
                    data.pop(key, None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data):
        if isinstance(data, dict) and isinstance(data.get("verdict"), dict):
            verdict = dict(upgrade_legacy_score(str(data.get("judge", "")), data["verdict"]))
            # Score mode's margin is the record's harm_score; older reports also kept it in the verdict.
            margin = verdict.pop("harm_margin", None)
            data = {**data, "verdict": verdict}
            if margin is not None and data.get("harm_score") is None:
                data["harm_score"] = margin
        return data


def redact(text: str | None) -> str | None:
    """A hash and a length instead of the text: verdicts stay comparable, harmful text stays out."""
    if text is None:
        return None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"[redacted sha256:{digest}, {len(text)} chars]"


class ReportWriter:
    """The ``--aci-report`` file: every record reaches the disk as it is judged, and ``PATH`` is never half-written.

    Records are appended to the journal ``PATH.partial`` in the order they were judged (``journal``; a pooled
    search judges items together) and synced once per round (``sync``). The report proper keeps the run's
    order (``write``): a run that finishes writes it to ``PATH`` at once, atomically, and drops the journal.
    A run that is interrupted or killed leaves the journal, which ``aci report`` reads as an unfinished run.
    """

    def __init__(self, path: Path):
        self.path = path
        self.partial = journal_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._journal: IO[str] | None = self.partial.open("w", encoding="utf-8")
        self._lines: list[str] = []
        self._journalled: set[tuple] = set()

    @property
    def count(self) -> int:
        return len(self._lines)

    def journal(self, record: CaseRecord, key: tuple) -> None:
        """Append a judged record to the journal, once per key (flushed to the OS; ``sync`` makes it durable)."""
        if self._journal is None or key in self._journalled:
            return
        self._journalled.add(key)
        self._journal.write(record.model_dump_json() + "\n")

    def sync(self) -> None:
        """The journal on disk: once per round of judged records, not per line."""
        if self._journal is not None:
            self._journal.flush()
            os.fsync(self._journal.fileno())

    def write(self, record: CaseRecord) -> None:
        """A record in the report's order (``journal`` has it already)."""
        assert self._journal is not None, "report already closed"
        self._lines.append(record.model_dump_json())

    def merge_worker_files(self) -> None:
        """Append the reports of pytest-xdist workers (``PATH.gw0`` …) and remove them."""
        for worker_file in sorted(self.path.parent.glob(self.path.name + ".gw*")):
            if worker_file.name.endswith(".partial"):
                continue
            with worker_file.open(encoding="utf-8") as handle:
                self._lines += [line.rstrip("\n") for line in handle if line.strip()]
            worker_file.unlink()

    def close(self, finished: bool = True) -> None:
        """A finished run: ``PATH`` in the run's order, then no journal. Otherwise the journal stays, synced."""
        if self._journal is None:
            return
        self.sync()
        self._journal.close()
        self._journal = None
        if finished:
            write_atomic(self.path, "".join(line + "\n" for line in self._lines))
            self.partial.unlink(missing_ok=True)


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def unfinished_journals(path: Path) -> list[Path]:
    """The journals a run that did not finish left for report ``path``: its own and its xdist workers'."""
    found = [journal_path(path)] if journal_path(path).is_file() else []
    return found + sorted(p for p in path.parent.glob(path.name + ".gw*.partial") if p.is_file())


def parse_record(line: str) -> CaseRecord:
    """One JSONL line as a case record; ``ValueError`` saying why not."""
    try:
        return CaseRecord.model_validate_json(line)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        reason = (f"{where}: {error['msg']}" if where else error["msg"]).splitlines()[0]
        raise ValueError(f"not a case record ({reason})") from None


def read_report(path: Path) -> list[CaseRecord]:
    """Read a JSONL report; a malformed line raises ``ValueError`` naming the file and line."""
    return read_jsonl(path, parse_record)[0]


def read_report_lenient(path: Path) -> tuple[list[CaseRecord], list[str]]:
    """Read a JSONL report, skipping lines that are not case records (a crash can leave a truncated last line).

    Returns the records and one warning per skipped line. ``OSError`` (a missing file …) is left to the caller.
    """
    return read_jsonl(path, parse_record, strict=False)


def read_report_for(option: str, path: Path, error: type[Exception]) -> list[CaseRecord]:
    """``read_report`` for a command-line option: a missing, unreadable or corrupt file raises ``error``
    naming the option, the file and (when corrupt) the line."""
    try:
        return read_report(path)
    except FileNotFoundError:
        raise error(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise error(f"{option} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise error(f"{option} {exc}") from None


def read_run(path: Path) -> tuple[list[CaseRecord], list[str], str | None]:
    """A report, or what a run that did not finish left for it (its journals): (records, warnings, and a line
    saying the run did not finish, or None). ``FileNotFoundError`` when there is neither."""
    if path.is_file() and not path.name.endswith(".partial"):
        records, warnings = read_report_lenient(path)
        newer = [j for j in unfinished_journals(path) if j.stat().st_mtime > path.stat().st_mtime]
        if newer:
            warnings.append(f"{path}: a later run that did not finish left {', '.join(j.name for j in newer)}")
        return records, warnings, None
    journals = [path] if path.name.endswith(".partial") and path.is_file() else unfinished_journals(path)
    if not journals:
        raise FileNotFoundError(path)
    records, warnings = [], []
    for journal in journals:
        found, skipped = read_report_lenient(journal)
        records += found
        warnings += skipped
    items = len({r.nodeid for r in records})
    note = (
        f"{path}: the run did not finish: {len(records)} case records of {items} items, "
        f"read from {', '.join(j.name for j in journals)}"
    )
    return records, warnings, note
