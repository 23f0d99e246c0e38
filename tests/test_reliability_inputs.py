"""Bad input never corrupts anything, and loading is safe.

* a data folder mixing good images (every odd mode) with every kind of broken file trains on the good ones,
  lists what it skipped in ``RUN/skipped_files.json`` and a warning line, and the counts are right;
* pickles are refused with the conversion command; ``vqldm convert`` loads with ``weights_only=True`` and
  never runs a pickle's code; no ``torch.load`` in the sources lacks ``weights_only=True``;
* ``benchmarks/bad_inputs.py`` (the generator of docs/bad_inputs.md) runs a case through the real CLI, and
  docs/bad_inputs.md is its current output (every case, as expected, with today's messages).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqldm.plumbing.checkpoint import PICKLE_SUFFIXES, load_safetensors, refuse_pickle
from vqldm.plumbing.errors import UserError
from vqldm.cli.main import build_parser, main

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("plumbing", "autoencoder", "diffusion", "pipelines", "configs", "benchmarks")


def load_bad_inputs_script():
    spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "benchmarks" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


bad_inputs = load_bad_inputs_script()


# ----------------------------------------------------------------------------- mixed good and broken data
def test_training_skips_every_kind_of_broken_file_and_counts_right(tmp_path, capsys):
    data = tmp_path / "data"
    good = bad_inputs.write_good_images(data, 12) + bad_inputs.write_odd_mode_images(data / "odd")
    expected = {f"broken/{name}": reason for name, reason in bad_inputs.write_broken_files(data / "broken").items()}
    (data / "empty_subfolder").mkdir()
    (data / ".hidden.png").write_bytes(b"")  # hidden files are not data: neither used nor reported
    run = tmp_path / "run"
    code = main(["train-autoencoder", "--config", "tiny", "--data", str(data), "--out", str(run), "--max-steps", "3",
                 "--set", "train.progress=false", "--set", "data.holdout_fraction=0.2"])
    out = capsys.readouterr().err  # warnings go to stderr
    assert code == 0
    skipped = json.loads((run / "skipped_files.json").read_text())
    assert {s["path"]: s["reason"] for s in skipped} == expected
    warning = [ln for ln in out.splitlines() if ln.startswith("warning: skipped")]
    assert len(warning) == 1
    total = len(good) + len(expected)
    assert warning[0].startswith(f"warning: skipped {len(expected)} of {total} files in {data}: ")
    for reason in ("2 truncated", "1 too large", "1 zero-byte file", "1 corrupt", "1 unreadable", "2 not an image,"):
        assert reason in warning[0], reason
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped_files"] == len(expected)
    assert 0 < metrics["holdout"]["images"] < len(good)
    assert metrics["train_images"] + metrics["holdout"]["images"] == len(good)  # every good image is used
    assert metrics["step"] == 3 and (run / "vqvae" / "config.json").is_file()


# ----------------------------------------------------------------------------- safe loading
@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_pickle_files_are_refused_naming_the_conversion_command(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.ones(1)}, path)
    for load in (refuse_pickle, load_safetensors):
        with pytest.raises(UserError) as err:
            load(path)
        msg = str(err.value)
        assert f"vqldm convert {path} --trust-pickle" in msg and "\n" not in msg


def test_convert_loads_weights_only_and_round_trips(tmp_path, capsys, monkeypatch):
    state = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(2), "steps": torch.tensor(7)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "model.ckpt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert main(["convert", str(tmp_path / "model.ckpt"), "--trust-pickle"]) == 0
    assert calls == [True]
    assert "wrote 3 tensors" in capsys.readouterr().out
    converted = load_safetensors(tmp_path / "model.safetensors")
    assert set(converted) == set(state) and all(torch.equal(converted[k], v) for k, v in state.items())
    # an explicit destination
    assert main(["convert", str(tmp_path / "model.ckpt"), str(tmp_path / "out" / "w.safetensors"), "--trust-pickle"]) == 0
    assert set(load_file(str(tmp_path / "out" / "w.safetensors"))) == set(state)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))  # runs at unpickling time


def test_convert_never_runs_a_pickles_code(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, tmp_path / "evil.pt")
    assert main(["convert", str(tmp_path / "evil.pt"), "--trust-pickle"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "not a plain weights file" in err[0] and "never runs code" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
                yield node
            if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Attribute) \
                    and f.value.attr == "serialization":
                yield node


def test_every_torch_load_in_the_sources_passes_weights_only_true():
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 10
    found, offenders = 0, []
    for path in files:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        for node in ast.walk(tree):  # no way around the check by importing the function under another name
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
                assert "load" not in {a.name for a in node.names}, f"{path}: `from {node.module} import load`"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("load", "loads") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("pickle", "dill", "cloudpickle"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.func.value.id}.{node.func.attr}")
        for call in _torch_load_calls(tree):
            found += 1
            kw = {k.arg: k.value for k in call.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.get_source_segment(source, call)}")
    assert found >= 1  # vqldm convert's call is seen: the scan works
    assert offenders == [], "torch.load without weights_only=True (or a raw unpickler):\n" + "\n".join(offenders)


# ----------------------------------------------------------------------------- the bad-input table generator
def test_bad_inputs_script_cases_name_real_commands():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert {c.command for c in bad_inputs.CASES} <= commands
    assert len({(c.command, c.name) for c in bad_inputs.CASES}) == len(bad_inputs.CASES)
    assert sum(c.command == "train-autoencoder" for c in bad_inputs.CASES) >= 20


@pytest.mark.slow  # a real `python -m vqldm` subprocess, ~10 s
def test_bad_inputs_script_runs_a_case_through_the_real_cli(tmp_path):
    case = next(c for c in bad_inputs.CASES if c.name == "data path does not exist")
    result = bad_inputs.run_case(case, tmp_path, {})
    assert result.status == "ran" and result.ok, result
    assert result.exit_code == 2 and result.last_line.startswith("vqldm: error: data path 'SCRATCH/missing' not found")
    assert result.left_behind == "nothing" and not result.traceback
    table = bad_inputs.render([result], [])
    assert "| 1 | `train-autoencoder` | data path does not exist | 2 |" in table


def _doc_rows() -> dict[tuple[str, str], dict]:
    """docs/bad_inputs.md's table: (command, bad input) -> its cells."""
    doc = (REPO / "docs" / "bad_inputs.md").read_text()
    assert "| # | command | bad input | exit | vqldm says | left in --out | ok |" in doc
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 7 and cells[0].isdigit():
            rows[(cells[1].strip("`"), cells[2])] = dict(zip(("exit", "says", "left", "ok"), cells[3:]))
    return rows


def test_bad_inputs_doc_is_the_scripts_current_output(tmp_path, capsys, monkeypatch):
    """docs/bad_inputs.md lists every case the script defines, each as expected; and the cases that need no
    trained model, run again here (in-process: a second each), still give the message and leftovers the
    document shows. A case added, or a message changed, without regenerating the document fails here."""
    rows = _doc_rows()
    cases = {(c.command, c.name): c for c in bad_inputs.CASES}
    assert sorted(set(cases) - set(rows)) == [], "cases missing from docs/bad_inputs.md: regenerate it"
    assert sorted(set(rows) - set(cases)) == [], "rows of cases the script no longer has: regenerate it"
    assert [key for key, row in rows.items() if row["ok"] != "yes"] == []
    assert all(row["exit"] == str(cases[key].expect_exit) for key, row in rows.items())

    monkeypatch.setenv("TQDM_DISABLE", "1")
    quick = [c for c in bad_inputs.CASES if not c.needs and c.expect_exit == 2 and c.fsize_limit is None]
    assert len(quick) >= 20
    for i, case in enumerate(quick):
        scratch = tmp_path / f"case{i}"
        scratch.mkdir()
        argv = case.setup(scratch, {})
        capsys.readouterr()
        assert main(argv) == 2, case.name
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        row = rows[(case.command, case.name)]
        says = bad_inputs._tidy(lines[-1], scratch).replace(str(tmp_path), "SCRATCH")
        notes = " (payload not run)" if case.name.startswith("pickle that runs code") else ""
        assert says + notes == row["says"], case.name
        assert bad_inputs._left_behind(scratch / "out") == row["left"], case.name
