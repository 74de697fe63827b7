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


def test_import_zfraud_is_light_and_still_gives_the_api_and_its_modules():
    """The package imports its API when first asked for (so a Ctrl-C in the command's first half
    second is zfraud.__main__'s): `zfraud.client` and dir() still work as when __init__ imported
    everything (a regression tester found both broken by the first version of this)."""
    code = ("import sys, zfraud\n"
            "heavy = sorted(m for m in ('numpy', 'zmq', 'zfraud.client') if m in sys.modules)\n"
            "print(heavy, zfraud.client.Client is zfraud.Client, zfraud.protocol.MAX_ROWS > 0,\n"
            "      {'Client', 'Summary', 'Worker', 'load_model'} <= set(dir(zfraud)))\n"
            "try:\n"
            "    zfraud.no_such_thing\n"
            "except AttributeError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == ["[] True True True", "module 'zfraud' has no attribute 'no_such_thing'"], r.stderr
