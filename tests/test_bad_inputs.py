"""Bad input through `conceptkit run`: a clear message naming the problem, exit status 2, no traceback,
and no file written. (Issue 13's catalog, in progress: workflow files, values, overrides, outputs.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conceptkit import cli

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
TEXT_TO_IMAGE = json.loads((WORKFLOWS / "text_to_image.json").read_text())


def api(**nodes):
    return {str(k): v for k, v in nodes.items()}


def ui(nodes, links=()):
    return {"version": 0.4, "nodes": nodes, "links": list(links)}


SAVE = {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
WORKFLOW_FILES = {  # name -> (file bytes, words the message must contain)
    "empty": (b"", "is empty"),
    "whitespace": (b"  \n\t ", "is empty"),
    "malformed": (b'{"nodes": [', "not valid JSON"),
    "not utf-8": ('{"1": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "a list": (b"[1, 2, 3]", "not a ComfyUI workflow"),
    "a number": (b"42", "not a ComfyUI workflow"),
    "nodes are not objects": (json.dumps(ui([1, "two"])).encode(), "entry 0 of 'nodes'"),
    "node without id": (json.dumps(ui([{"type": "ConceptKitSample"}])).encode(), "has no id"),
    "node without type": (json.dumps(ui([{"id": 1}])).encode(), "has no type"),
    "duplicate node ids": (json.dumps(ui([{"id": 1, "type": "SaveImage"}, {"id": 1, "type": "SaveImage"}])).encode(),
                           "two nodes have the id 1"),
    "short link": (json.dumps(ui([{"id": 1, "type": "SaveImage"}], [[1, 2, 0]])).encode(), "link entry 0"),
    "non-integer slot": (json.dumps(ui([{"id": 1, "type": "SaveImage"}], [[1, 2, "a", 1, 0, "IMAGE"]])).encode(),
                         "not a slot number"),
    "links not a list": (json.dumps({"nodes": [], "links": {"a": 1}}).encode(), "'links' is not a list"),
    "inputs not a list": (json.dumps(ui([{"id": 1, "type": "SaveImage", "inputs": {"a": 1}}])).encode(),
                          "inputs are not a list"),
    "api inputs a list": (json.dumps(api(**{"1": {"class_type": "SaveImage", "inputs": [1, 2]}})).encode(),
                          "inputs are not an object"),
    "api class_type not text": (json.dumps(api(**{"1": {"class_type": 5, "inputs": {}}})).encode(),
                                "class_type is not"),
    "unknown node type": (json.dumps(api(**{"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": SAVE})).encode(),
                          "unknown node type 'NoSuchNode'"),
    "bom and unknown node type": (b"\xef\xbb\xbf" + json.dumps(api(**{"1": {"class_type": "NoSuchNode"},
                                                                     "2": SAVE})).encode(), "NoSuchNode"),
}


def run(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def written(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("case", sorted(WORKFLOW_FILES))
def test_a_bad_workflow_file_gets_one_clear_answer(case, tmp_path, capsys):
    content, words = WORKFLOW_FILES[case]
    path = tmp_path / "wf.json"
    path.write_bytes(content)
    code, err = run(["run", str(path), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("conceptkit: error:") and words in err, err
    assert written(tmp_path / "out") == []


def text_to_image(tmp_path: Path) -> Path:
    path = tmp_path / "t2i.json"
    path.write_text(json.dumps(TEXT_TO_IMAGE))
    return path


@pytest.mark.parametrize("override,words", [
    ("2.no_such_input=1", "has no input 'no_such_input'"),
    ("2.cfg=NaN", "not a finite number"),
    ("2.cfg=Infinity", "not a finite number"),
    ("2.cfg=-Infinity", "not a finite number"),
    ("2.steps=2.5", "not a whole number"),
    ("2.steps=0", "smaller than the minimum"),
    ("2.sampler=nope", "not one of the choices"),
    ("9.seed=1", "has no node 9"),
    ("2seed=1", "expected NODE_ID.INPUT=VALUE"),
    ("2.seed", "expected NODE_ID.INPUT=VALUE"),
])
def test_a_bad_override_is_refused_before_the_model_loads(override, words, tmp_path, capsys):
    code, err = run(["run", str(text_to_image(tmp_path)), "--out", str(tmp_path / "out"), "-q", "--set", override],
                    capsys)
    assert code == 2 and "Traceback" not in err and words in err, err
    assert written(tmp_path / "out") == []


def test_the_workflow_path_a_folder_or_missing_and_out_a_file(tmp_path, capsys):
    code, err = run(["run", str(tmp_path), "-q"], capsys)
    assert code == 2 and "is a folder" in err
    code, err = run(["run", str(tmp_path / "nope.json"), "-q"], capsys)
    assert code == 2 and "no such workflow file" in err
    (tmp_path / "taken").write_text("x")
    code, err = run(["run", str(text_to_image(tmp_path)), "--out", str(tmp_path / "taken"), "-q"], capsys)
    assert code == 2 and "is a file" in err and (tmp_path / "taken").read_text() == "x"
