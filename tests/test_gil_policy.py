"""Short scans keep the GIL by default, but their bodies must stay valid nogil code.

They are compiled here with SHORT_SCAN_RELEASES_GIL=True (to C only, in a temporary
directory), which makes Cython check that no Python object is touched inside them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "dataplane").rglob("*.pyx")
    if "SHORT_SCAN_RELEASES_GIL" in p.read_text()
)


def test_the_policy_is_used():
    assert len(FILES) >= 4


@pytest.mark.parametrize("pyx", FILES)
def test_short_scans_compile_as_nogil(pyx, tmp_path):
    from Cython.Build import cythonize

    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "dataplane", src / "dataplane", ignore=shutil.ignore_patterns("*.so", "*.c")
    )
    cythonize(
        [str(src / pyx)],
        compile_time_env={"SHORT_SCAN_RELEASES_GIL": True},
        include_path=[str(src)],
        quiet=True,
        force=True,
    )
    assert (src / pyx).with_suffix(".c").exists()
