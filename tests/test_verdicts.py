"""The verdict file (``linewatch audit`` -> ``linewatch retrain``): strict validation with line numbers."""
import json

import pytest

from linewatch.jobs.verdicts import VerdictError, read_verdicts, write_verdicts


def _rec(source, label="good", **kw):
    return {"source": str(source), "label": label, "score": 12.5, "bundle": "abc123",
            "reviewed_utc": "2026-12-01T08:00:00+00:00", **kw}


@pytest.fixture
def images(tmp_path):
    paths = []
    for name in ("a.png", "b.png", "c.png"):
        p = tmp_path / name
        p.write_bytes(b"not decoded here")
        paths.append(p)
    return paths


def test_reads_good_and_defect_verdicts_in_file_order(images, tmp_path):
    f = write_verdicts(tmp_path / "v.jsonl", [_rec(images[0]), _rec(images[1], "defect"), _rec(images[2])])
    vs = read_verdicts(f)
    assert [v.path for v in vs.good] == [images[0], images[2]]
    assert [v.path for v in vs.defect] == [images[1]]
    assert vs.bundles == {"abc123": 3} and vs.missing == [] and vs.replaced == 0


@pytest.mark.parametrize("line, expected", [
    ("not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    (json.dumps({"source": "x", "label": "good"}), "missing field(s) bundle, reviewed_utc, score"),
    (json.dumps({**_rec("x"), "extra": 1}), "unknown field(s) extra"),
    (json.dumps(_rec("x", label="ok")), "field 'label' must be \"defect\" or \"good\""),
    (json.dumps({**_rec("x"), "score": "high"}), "field 'score' must be a number"),
    (json.dumps({**_rec("x"), "score": True}), "field 'score' must be a number"),
    (json.dumps({**_rec("x"), "reviewed_utc": "yesterday"}), "'reviewed_utc' is not an ISO 8601 time"),
    (json.dumps({**_rec("x"), "bundle": 7}), "field 'bundle' must be a string"),
])
def test_invalid_lines_stop_the_read_with_line_number_and_reason(images, tmp_path, line, expected):
    f = tmp_path / "v.jsonl"
    f.write_text(json.dumps(_rec(images[0])) + "\n" + line + "\n")
    with pytest.raises(VerdictError, match="line 2") as err:
        read_verdicts(f)
    assert expected in str(err.value)


def test_missing_images_are_reported_and_skipped_and_later_verdicts_replace_earlier(images, tmp_path):
    gone = tmp_path / "gone.png"
    f = write_verdicts(tmp_path / "v.jsonl", [_rec(images[0], "defect"), _rec(gone), _rec(images[0], "good")])
    vs = read_verdicts(f)
    assert [(v.path, v.label, v.line) for v in vs.verdicts] == [(images[0], "good", 3)]
    assert vs.replaced == 1 and len(vs.missing) == 1 and "line 2" in vs.missing[0] and "gone.png" in vs.missing[0]


def test_relative_sources_resolve_against_the_verdict_files_folder(images, tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    f = write_verdicts(tmp_path / "v.jsonl", [_rec("b.png")])
    assert read_verdicts(f).verdicts[0].path == images[1]


def test_empty_or_absent_file_is_an_error(tmp_path):
    with pytest.raises(VerdictError, match="no such verdict file"):
        read_verdicts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(VerdictError, match="holds no verdicts"):
        read_verdicts(tmp_path / "empty.jsonl")
