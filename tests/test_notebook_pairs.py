"""Each teaching notebook is paired with a jupytext ``py:percent`` file (the reviewable text):
the two must hold the same cells, so an edit to one that was not synced to the other fails here."""
import re
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
VERSION = re.compile(r"^#\s+jupytext_version: .*$", re.MULTILINE)  # the writer's version only


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_its_py_percent_file_hold_the_same_cells(ipynb):
    paired = ipynb.with_suffix(".py")
    assert paired.exists(), f"{ipynb.name} has no paired {paired.name} (jupytext --set-formats ipynb,py:percent)"
    from_ipynb = jupytext.writes(jupytext.read(ipynb), fmt="py:percent")
    on_disk = paired.read_text()
    assert VERSION.sub("", from_ipynb) == VERSION.sub("", on_disk), (
        f"{paired.name} is out of sync with {ipynb.name}: run `jupytext --sync {ipynb}`")
