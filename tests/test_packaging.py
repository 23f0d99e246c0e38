"""`pip install .` (not editable) claims one import name, `vqldm`, and the installed package works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds and installs a wheel: ~20 s
def test_install_claims_only_the_vqldm_import_name(tmp_path, tiny_ae_run):
    target, src = tmp_path / "site", tmp_path / "src"
    # build from a copy, so setuptools' build/ and egg-info folders do not land in the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "runs", "bench_out", "*.egg-info", "__pycache__", ".whl"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
                           "--target", str(target), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = sorted(p.name for p in target.iterdir() if p.name not in ("bin",) and not p.name.endswith(".dist-info"))
    assert top == ["vqldm"], top  # no top-level autoencoder / diffusion / pipelines / configs / plumbing
    pkg = target / "vqldm"
    assert {"autoencoder", "diffusion", "pipelines", "plumbing", "configs"} <= {p.name for p in pkg.iterdir()}
    assert (pkg / "configs" / "autoencoder" / "fashion-mnist.yaml").is_file()
    assert any((pkg / "pipelines" / "default_model" / "unet").glob("*.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import vqldm, vqldm.cli.main as cli, vqldm.plumbing.config as c; "
            "assert vqldm.__file__.startswith(%r), vqldm.__file__; "
            "assert c.resolve_config_path('tiny', 'autoencoder').is_file(); "
            "import importlib.util as u; "
            "assert all(u.find_spec(n) is None for n in ('autoencoder', 'diffusion', 'pipelines', 'plumbing', 'configs')); "
            "print('ok')") % str(target)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
    cli = subprocess.run([sys.executable, "-m", "vqldm", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "train-autoencoder" in cli.stdout and "train-prior" in cli.stdout

    # a prior folder trained here loads and samples with the installed package
    from vqldm.cli.main import main

    run = tmp_path / "prior-run"
    assert main(["train-prior", "--kind", "masked", "--config", "tiny", "--autoencoder", str(tiny_ae_run), "--data", "fashion-mnist",
                 "--out", str(run), "--max-steps", "2", "--set", "data.max_images=64", "--set", "cache.holdout_max_images=16",
                 "--set", "train.progress=false"]) == 0
    gen = subprocess.run([sys.executable, "-m", "vqldm", "generate", "--model", str(run / "prior"), "--class", "3", "--num-images", "4",
                          "--out", str(tmp_path / "p.png"), "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert (tmp_path / "p.png").stat().st_size > 0 and str(target) in subprocess.run(
        [sys.executable, "-c", "import vqldm.priors.model as m; print(m.__file__)"], env=env, capture_output=True, text=True).stdout


def test_every_benchmark_imports_names_that_exist():
    """Benchmarks import vqldm's internals inside their functions, where a moved name fails only when the
    benchmark runs: check every ``from vqldm... import name`` in benchmarks/ and scripts/ resolves."""
    import ast
    import importlib

    root = Path(__file__).resolve().parent.parent
    missing = []
    for f in sorted([*root.glob("benchmarks/*.py"), *root.glob("scripts/*.py")]):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vqldm":
                module = importlib.import_module(node.module)
                missing += [f"{f.name}: {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
    assert not missing, missing
