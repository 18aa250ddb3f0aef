"""Atomic writes and the one JSONL reader."""

from __future__ import annotations

import json

import pytest

from pytest_aci.files import JsonlError, atomic_target, read_jsonl, write_atomic


def test_an_interrupted_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out" / "report.json"
    write_atomic(target, "old\n")
    with pytest.raises(KeyboardInterrupt), atomic_target(target) as tmp:
        tmp.write_text("half of the ne")
        raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]
    write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_strict_reading_names_the_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(JsonlError, match=rf"^{path}:4: Expecting value"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(JsonlError, match=rf"^{path}:2: not UTF-8 \(byte 0\)"):
        read_jsonl(path)


def test_lenient_reading_skips_bad_lines_with_a_warning_each(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n\xff\n{"a": 2}\n{"a": 3')
    items, warnings = read_jsonl(path, strict=False)
    assert items == [{"a": 1}, {"a": 2}]
    assert [w.split(": skipped, ")[0] for w in warnings] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    assert warnings[-1].endswith(", truncated last line")


def test_a_parser_decides_what_a_line_must_be(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')

    def an_object(line: str) -> dict:
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value

    with pytest.raises(JsonlError, match=":2: not a JSON object"):
        read_jsonl(path, an_object)
