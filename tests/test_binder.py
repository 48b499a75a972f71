"""Binder and Colab delivery: the configuration, its resolution, and the memory a notebook needs.

The quick checks read ``binder/``; the resolver checks ask pip (``--dry-run``) against the
package index, as the real builds would. Binder's 2 GB is checked where the notebooks run: nbval
runs each one under a memory watcher (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TEST_TOOLS = {"pytest", "nbval", "playwright", "hypothesis", "mypy", "ruff", "import-linter"}
#: Built by postBuild with the kit's portable flags, not installed from requirements.txt (pip would
#: build it for the image builder's own CPU).
BUILT_BY_POSTBUILD = {"llama-cpp-python"}
# What Colab ships (late 2026: a CUDA torch, transformers 5, hub 2, ipywidgets 7): the set-up cell's
# install must keep every one of them.
COLAB = {"torch": "2.11.0+cu126", "torchvision": "0.26.0+cu126", "transformers": "5.24.0",
         "huggingface-hub": "2.4.0", "tokenizers": "0.23.3", "numpy": "2.4.6", "ipywidgets": "7.7.1"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``{name: version}`` for every ``name==version`` line (extras dropped, names normalised)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?==(\S+)", line.strip())
        if match:
            found[normalise(match.group(1))] = match.group(3)
    return found


def test_binder_uses_python_3_11():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_binder_pins_the_tested_stack_with_a_cpu_torch():
    local, binder = pins(REPO / "requirements.txt"), pins(BINDER / "requirements.txt")
    runtime = {name: version for name, version in local.items() if name not in TEST_TOOLS | BUILT_BY_POSTBUILD}
    assert binder.pop("torch") == runtime.pop("torch") + "+cpu"
    assert binder == runtime
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    assert f"--extra-index-url {CPU_INDEX}" in lines


def test_postbuild_installs_the_package_and_prepares_the_model():
    script = BINDER / "postBuild"
    assert os.access(script, os.X_OK), "repo2docker runs postBuild only if it is executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    commands = [line for line in script.read_text().splitlines() if line and not line.startswith("#")]
    assert "set -euo pipefail" in commands  # a failed step fails the image build
    assert any(re.search(r"pip install .*-e \.$", line) for line in commands)
    prepare = [line for line in commands if "-m gemma_widgets prepare" in line]
    assert prepare and "--precision ov-int4" in prepare[0]  # the export is built in the image
    assert "--compile" in prepare[0]  # and notebook 05's inductor kernels: no core cell compiles for minutes
    built = [line for line in commands if "tools/llamacpp_wheel.sh" in line]
    assert built and "LLAMA_CMAKE_ARGS" not in built[0]  # llama.cpp, with the portable flags


def test_the_portable_llama_cpp_build_has_no_avx512_and_no_amx():
    script = (REPO / "tools" / "llamacpp_wheel.sh").read_text()
    flags = re.search(r"ARGS=\$\{LLAMA_CMAKE_ARGS:-(.*?)\}", script, re.S).group(1).split()
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AVX2=ON" in flags
    assert not [f for f in flags if re.match(r"-DGGML_(AVX512|AMX)\w*=ON", f)]


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def index():
    if not pypi_reachable():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PyPI is unreachable: the resolver checks need the package index")
        pytest.skip("PyPI is unreachable: the resolver checks need the package index")


def dry_run(python: Path, *requirements: str, ignore_installed: bool = False) -> dict[str, str]:
    """What ``pip install`` would install into ``python``'s environment: ``{name: version}``."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
               "--report", "-", "--retries", "1", *requirements]
    if ignore_installed:
        command.insert(command.index("--dry-run"), "--ignore-installed")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip could not resolve {requirements}:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    return {normalise(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}


def fake_environment(folder: Path, installed: dict[str, str]) -> Path:
    """A bare virtual environment where ``installed`` appear installed (metadata only)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name, version in installed.items():
        info = Path(site) / f"{name.replace('-', '_')}-{version}.dist-info"  # as pip names it
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return python


@pytest.mark.integration
def test_binder_requirements_resolve(index, tmp_path):
    """pip resolves binder/requirements.txt; PyTorch's CPU index is out of reach here, so torch's
    +cpu wheel must come from a local wheel folder (PIP_FIND_LINKS) as Binder takes it from the index."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(line for line in (BINDER / "requirements.txt").read_text().splitlines()
                                      if not line.startswith("--extra-index-url")))
    python = fake_environment(tmp_path / "env", {})
    planned = dry_run(python, "-r", str(requirements), ignore_installed=True)
    pinned = pins(BINDER / "requirements.txt")
    assert {name: planned.get(name) for name in pinned} == pinned
    assert not [name for name in planned if name.startswith("nvidia-")], "a CUDA build crept in"


@pytest.mark.integration
def test_colab_install_keeps_colabs_packages(index, tmp_path):
    """The set-up cell's install on a Colab-like environment, resolved by pip: with Colab's packages as
    constraints (as the cell gives them) it resolves, and replaces none of them nor adds CUDA libraries."""
    from gemma_widgets.course.environment import COLAB_PACKAGES, EXTRAS

    python = fake_environment(tmp_path / "colab", COLAB)
    constraints = tmp_path / "keep.txt"
    constraints.write_text("\n".join(f"{name}=={COLAB[name]}" for name in COLAB_PACKAGES))
    planned = dry_run(python, "-c", str(constraints), str(REPO), *EXTRAS["openvino"], *EXTRAS["bnb"])
    replaced = {name: v for name, v in planned.items() if name in COLAB or name.startswith("nvidia-")}
    assert not replaced, f"the install would replace Colab's packages: {replaced}"
    assert "gemma-widgets" in planned and "openvino-genai" in planned and "optimum-intel" not in planned
