"""tools/sync_notebooks.py writes pyproject's Repository URL into code: only a plain GitHub URL, as a
string literal, and the install pinned to this version's release tag."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import sync_notebooks  # noqa: E402

PYPROJECT = '[project]\nname = "gemma_widgets"\nversion = "0.3.1"\n[project.urls]\nRepository = {url}\n'


def _project_with(monkeypatch, tmp_path, url: str) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.format(url=url))
    monkeypatch.setattr(sync_notebooks, "ROOT", tmp_path)


@pytest.mark.parametrize("url", [
    '"https://github.com/a/b\\")\\nopen(\\"pwned\\", \\"w\\")\\n(\\""',  # closes the string: code in every notebook
    "'https://github.com/a/b\" + __import__(\"os\").getcwd() + \"'",
    '"https://github.com/a/b) [x](javascript:alert(1)"',  # a badge's link
    '"https://evil.example/a/b"', '"http://github.com/a/b"', '"https://github.com/a/b/c"',
])
def test_a_crafted_repository_url_is_refused_before_it_reaches_a_notebook(monkeypatch, tmp_path, url):
    _project_with(monkeypatch, tmp_path, url)
    with pytest.raises(SystemExit, match="must be https://github.com/OWNER/NAME"):
        sync_notebooks.setup_cell()


def test_the_setup_cell_installs_this_versions_release_as_a_string_literal(monkeypatch, tmp_path):
    _project_with(monkeypatch, tmp_path, '"https://github.com/my-org/gemma.widgets_fork"')
    namespace: dict = {}
    exec(sync_notebooks.setup_cell().split('if "google.colab"')[0], namespace)  # up to the Colab-only install
    assert namespace["KIT"] == "gemma_widgets @ git+https://github.com/my-org/gemma.widgets_fork@v0.3.1"
    assert sync_notebooks.slug() == "my-org/gemma.widgets_fork"
