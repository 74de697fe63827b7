"""The source distribution: `pip install zfraud-*.tar.gz` must be able to build the kernels.

The sdist carried the generated ext/*.c but no ext/*.pyx, and setup.py builds from ext/*.pyx:
built from it, the wheel was py3-none-any with no kernel, installed without a word, and every
command then failed on `No module named 'zfraud._dedup'`."""
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_sdist_carries_the_kernel_sources_and_no_build_outputs(tmp_path):
    pytest.importorskip("build")  # the `test` extra installs it
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (sdist,) = tmp_path.glob("zfraud-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    kernels = {f"ext/{p.name}" for p in (ROOT / "ext").glob("*.pyx")}
    assert len(kernels) == 6 and kernels <= names, sorted(kernels - names)
    assert {"setup.py", "pyproject.toml", "LICENSE", "README.md", "conf/rules.toml",
            "zfraud/models/default.json"} <= names
    generated = [n for n in names if n.endswith((".c", ".so", ".pyc"))]
    assert not generated, generated
