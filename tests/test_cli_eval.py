"""gaze-eval end to end: table and JSON output, warnings on stderr, one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gazenlq.cli.evaluate import main
from gazenlq.nlq.annotations import Query, write_queries
from gazenlq.nlq.submission import Entry, to_submission_json, write_submission


@pytest.fixture
def gt(tmp_path) -> Path:
    """Three queries in one clip, answers [10, 20] s."""
    path = tmp_path / "gt.json"
    write_queries(path, [Query("c0", "v0", "a0", i, f"where is thing {i}?", None, (0.0, 480.0),
                               (10.0, 20.0), (10.0, 20.0)) for i in range(3)])
    return path


@pytest.fixture
def preds(tmp_path) -> Path:
    """Query 0 hit at rank 1, query 1 hit at rank 2 (IoU 0.4), query 2 predicted twice."""
    path = tmp_path / "preds.json"
    write_submission(path, [
        Entry("c0", "a0", 0, ((10.0, 20.0),)),
        Entry("c0", "a0", 1, ((100.0, 110.0), (14.0, 18.0))),
        Entry("c0", "a0", 1, ((10.0, 20.0),)),
    ])
    return path


def run_ok(capsys, *argv) -> tuple[str, str]:
    main([str(a) for a in argv])
    out = capsys.readouterr()
    return out.out, out.err


def run_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    assert "Traceback" not in out.err
    return lines[0]


def test_table(capsys, preds, gt):
    out, err = run_ok(capsys, preds, gt)
    header, rule, row = out.splitlines()
    assert header.split() == ["R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU", "entries"]
    assert set(rule) <= {"-", " "}
    assert row.split() == ["66.67", "66.67", "100.00", "66.67", "66.67", "3"]
    warnings = err.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: 1 of 3 ground-truth queries have no prediction")
    assert warnings[1].startswith("warning: 1 queries are predicted more than once")


def test_json_with_custom_k_and_iou(capsys, preds, gt):
    out, _ = run_ok(capsys, preds, gt, "--json", "--k", "2", "--iou", "0.35", "--iou", "0.9")
    data = json.loads(out)
    assert data["recall"] == {"R2@0.35": 100.0, "R2@0.9": pytest.approx(200 / 3)}
    assert data["num_entries"] == 3 and data["num_ground_truth"] == 3
    assert data["missing"] == [{"clip_uid": "c0", "annotation_uid": "a0", "query_idx": 2}]
    assert len(data["warnings"]) == 2


def test_by_template_rows_and_json(capsys, tmp_path, preds):
    path = tmp_path / "gt_t.json"
    write_queries(path, [Query("c0", "v0", "a0", i, f"where is thing {i}?",
                               "where" if i < 2 else "which", (0.0, 480.0), (10.0, 20.0),
                               (10.0, 20.0)) for i in range(3)])
    out, _ = run_ok(capsys, preds, path, "--by-template")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows[0] == ["all", "66.67", "66.67", "100.00", "66.67", "66.67", "3"]
    # "where": queries 0 (rank-1 hit) and 1 (twice: a rank-2 hit at IoU 0.4, a rank-1 hit)
    assert rows[1] == ["where", "66.67", "66.67", "100.00", "66.67", "66.67", "3"]
    assert len(rows) == 2  # "which" has no prediction: no row
    data = json.loads(run_ok(capsys, preds, path, "--by-template", "--json")[0])
    assert list(data["templates"]) == ["where"]
    assert data["templates"]["where"]["num_ground_truth"] == 2


def test_clean_run_has_no_warnings(capsys, tmp_path, gt):
    path = tmp_path / "all.json"
    write_submission(path, [Entry("c0", "a0", i, ((10.0, 20.0),)) for i in range(3)])
    out, err = run_ok(capsys, path, gt)
    assert err == ""
    assert out.splitlines()[2].split() == ["100.00"] * 5 + ["3"]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def submission_with(**entry) -> dict:
    item = {"clip_uid": "c0", "annotation_uid": "a0", "query_idx": 0,
            "predicted_times": [[10.0, 20.0]], **entry}
    return {**to_submission_json([]), "results": [item]}


def test_malformed_predictions(capsys, tmp_path, gt):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "results": [')
    line = run_error(capsys, bad, gt)
    assert line.startswith(f"error: {bad}: not valid JSON")


def test_malformed_ground_truth(capsys, tmp_path, preds):
    bad = tmp_path / "gt_bad.json"
    bad.write_text("[1, 2")
    assert run_error(capsys, preds, bad).startswith(f"error: {bad}: not valid JSON")


def test_missing_key_in_predictions(capsys, tmp_path, gt):
    data = submission_with()
    del data["results"][0]["annotation_uid"]
    bad = write_json(tmp_path / "p.json", data)
    assert run_error(capsys, bad, gt) == f"error: {bad}: results[0]: missing 'annotation_uid'"


def test_missing_key_in_ground_truth(capsys, tmp_path, preds, gt):
    data = json.loads(gt.read_text())
    del data["videos"][0]["clips"][0]["annotations"][0]["annotation_uid"]
    bad = write_json(tmp_path / "g.json", data)
    assert run_error(capsys, preds, bad) == (
        f"error: {bad}: videos[0].clips[0].annotations[0]: missing 'annotation_uid'")


def test_unknown_clip(capsys, tmp_path, gt):
    bad = write_json(tmp_path / "p.json", submission_with(clip_uid="nope"))
    line = run_error(capsys, bad, gt)
    assert line.startswith(f"error: {bad}: results[0]: unknown query clip_uid=nope ")
    assert line.endswith(f"(not in {gt})")


def test_wrong_challenge(capsys, tmp_path, gt):
    bad = write_json(tmp_path / "p.json", {**submission_with(), "challenge": "other"})
    assert run_error(capsys, bad, gt) == (
        f"error: {bad}: challenge: expected 'ego4d_nlq_challenge', got 'other'")


def test_missing_file(capsys, tmp_path, gt):
    assert run_error(capsys, tmp_path / "none.json", gt) == (
        f"error: {tmp_path / 'none.json'}: no such file")


def test_bad_k(capsys, preds, gt):
    assert run_error(capsys, preds, gt, "--k", "0") == "error: K must be a positive integer, got 0"


def test_console_script(tmp_path, preds, gt):
    """The installed entry point, as a user runs it."""
    script = Path(sys.executable).with_name("gaze-eval")
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (pip install -e .)")
    ok = subprocess.run([script, preds, gt, "--json"], capture_output=True, text=True,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["num_entries"] == 3
    bad = write_json(tmp_path / "p.json", submission_with(query_idx=7))
    err = subprocess.run([script, bad, gt], capture_output=True, text=True, check=False)
    assert err.returncode == 2
    assert err.stdout == ""
    assert err.stderr.count("\n") == 1 and "Traceback" not in err.stderr
    assert err.stderr.startswith(f"error: {bad}: results[0]: unknown query")


def test_examples_show_top1_beside_the_ground_truth(capsys, preds, gt):
    out, _ = run_ok(capsys, preds, gt, "--examples", 2, "--iou", 0.5)
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["query", "answer"] and lines[0].split()[-1] == "hit@0.5"
    assert "where is thing 0?" in lines[2] and lines[2].split()[-2:] == ["1.00", "hit"]
    # query 1's top-1 is [100, 110] against [10, 20]: IoU 0, a miss
    assert "where is thing 1?" in lines[3] and lines[3].split()[-2:] == ["0.00", "miss"]
    assert "1 of 2 shown answers hit" in out
    assert out.rstrip().splitlines()[-1].split()[0] != "query"  # the metrics table follows
