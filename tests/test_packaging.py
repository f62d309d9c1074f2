"""The package as installed: the wheel's import names, data and entry points, and the documented import paths."""

from __future__ import annotations

import ast
import fnmatch
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import jax_cer.lora
import jax_cer.parallel
import jax_cer.text.lora
import jax_cer.text.textualize
import jax_cer.textualize
import jax_cer.train
import jax_cer.train_step
import jax_cer.training.fusion
import jax_cer.training.parallel
import jax_cer.training.step
from jax_cer import metrics
from jax_cer.kernels import AttentionFn, flash_attention, xla_attention
from jax_cer.models import build_model, from_original_state_dict, to_original_state_dict
from jax_cer.models.attention import dot_product_attention
from jax_cer.optim import so
from jax_cer.text import SentenceEncoder, TextClassifier, flash_attention_fn
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _source_dir(package: str) -> Path:
    """The repository folder a package is built from (package-dir mapping, else its dotted path)."""
    mapping = SETUPTOOLS.get("package-dir", {})
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in mapping:
            return REPO / mapping[head] / Path(*parts[i:])
    return REPO / Path(*parts)


def test_every_package_folder_is_listed() -> None:
    """The explicit package list names every folder with Python modules under jax_cer/ and the mapped ones."""
    listed = set(SETUPTOOLS["packages"])
    for package in listed:
        assert _source_dir(package).is_dir(), f"{package}: no folder {_source_dir(package)}"
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "jax_cer").rglob("__init__.py")} | {
        "jax_cer.kernels",
        "jax_cer.reference",
    }
    assert found - listed == set(), f"package folders missing from pyproject's packages: {sorted(found - listed)}"
    assert SETUPTOOLS["package-dir"] == {"jax_cer.kernels": "kernels", "jax_cer.reference": "repro/reference"}


def test_every_golden_file_is_package_data() -> None:
    golden = REPO / "jax_cer" / "parity" / "golden"
    data = SETUPTOOLS["package-data"]
    for path in sorted(golden.rglob("*")):
        if path.is_file():
            package = ".".join(path.parent.relative_to(REPO).parts)
            assert any(fnmatch.fnmatch(path.name, g) for g in data.get(package, [])), f"{path} is not package data"


def test_the_package_never_imports_torch_at_module_level() -> None:
    """No module of jax_cer/ or kernels/ imports torch at top level, and importing them does not load it
    (only jax_cer.reference, built from repro/reference/, is the PyTorch side)."""
    for folder in ("jax_cer", "kernels"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path} imports torch"
    code = (
        "import sys, jax_cer.cli, jax_cer.models, jax_cer.parity.golden, jax_cer.kernels, jax_cer.kernels.aot, "
        "jax_cer.text, jax_cer.training, jax_cer.data; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(sys.prefix))


def _tracked_copy(dest: Path) -> Path:
    """The working tree's tracked and untracked-but-not-ignored files, copied to ``dest`` (no build leftovers)."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files are the source")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _tracked_copy(tmp / "src")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp.glob("jax_cer-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_only_the_jax_cer_import_name(wheel) -> None:
    names = wheel.namelist()
    top = {n.split("/", 1)[0] for n in names if not n.startswith("jax_cer-")}
    assert top == {"jax_cer"}, f"top-level names in the wheel: {sorted(top)}"
    for module in ("jax_cer/kernels/flash_attention.py", "jax_cer/reference/__init__.py", "jax_cer/cli.py"):
        assert module in names, f"{module} is not in the wheel"
    golden = REPO / "jax_cer" / "parity" / "golden"
    for path in golden.rglob("*"):
        if path.is_file():
            rel = path.relative_to(REPO).as_posix()
            assert rel in names, f"golden file {rel} is not in the wheel"
            assert wheel.read(rel) == path.read_bytes(), f"{rel} differs in the wheel"


def test_wheel_declares_the_command_and_the_pytest_plugin(wheel) -> None:
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry).decode()
    assert "jax-cer = jax_cer.cli:main" in text
    assert "[pytest11]" in text, "the pytest plugin (--jax-cer-repro) is not registered"


def test_documented_import_paths_keep_working() -> None:
    """The import paths the README documents, old ones included (aliases of the modules that moved)."""
    assert jax_cer.lora is jax_cer.text.lora and jax_cer.textualize is jax_cer.text.textualize
    assert jax_cer.train_step is jax_cer.training.step and jax_cer.parallel is jax_cer.training.parallel
    assert jax_cer.train is jax_cer.training.fusion
    assert callable(jax_cer.train_step.make_forward) and callable(jax_cer.parallel.data_mesh)
    assert all(callable(f) for f in (flash_attention, xla_attention, dot_product_attention, so, build_model))
    assert all(callable(f) for f in (from_original_state_dict, to_original_state_dict, flash_attention_fn))
    assert callable(metrics.weighted_f1) and AttentionFn is not None
    assert SentenceEncoder.from_pretrained and TextClassifier
