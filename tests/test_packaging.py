"""What ``pip install forksafe`` gets: the sdist and the wheel, built here, then installed.

The wheel is built from the sdist (``python -m build``), as an index's users get
it; its metadata and files are checked, then it is installed into a fresh venv
without extras (Django comes from the package index) and its console script runs
the demo and ``doctor --help`` there, from a temporary directory, with nothing of
this checkout on the path. Once per CI row: the run of the sqlite3 driver.
"""

from __future__ import annotations

import ast
import email.message
import email.parser
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

import forksafe
from forksafe.demo import UWSGI_NEEDS_CHECKOUT
from tests.harness.demo import scenario_verdicts

CHECKOUT = Path(__file__).resolve().parents[1]
NAME_VERSION = f"forksafe-{forksafe.__version__}"
# Written into the fresh venv (a .pth line imports it in every interpreter started there,
# the demo's scenario processes too): at exit, it logs what came from the checkout.
_GUARD = """\
import atexit, json, os, sys

def _report():
    checkout = os.environ.get("FORKSAFE_CHECKOUT")
    log = os.environ.get("FORKSAFE_GUARD_LOG")
    if not checkout or not log:
        return
    inside = lambda p: os.path.realpath(p or "/nonexistent").startswith(checkout + os.sep)
    bad = [f"sys.path {p}" for p in sys.path if p and inside(p)]
    bad += [
        f"module {name} from {m.__file__}"
        for name, m in list(sys.modules.items())
        if getattr(m, "__file__", None) and inside(m.__file__)
    ]
    with open(log, "a") as f:
        f.write(json.dumps({"argv": sys.argv, "bad": bad}) + "\\n")

atexit.register(_report)
"""


@pytest.fixture(scope="module", autouse=True)
def once_per_ci_row(driver: str) -> None:
    """Skip unless this is the sqlite3 run (noxfile.py runs pytest once per driver)."""
    if driver != "sqlite3":
        pytest.skip("packaging does not depend on the driver: it runs in the sqlite3 run only")


@pytest.fixture(scope="module")
def dist(once_per_ci_row: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from it (``python -m build``, no isolation: no index)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(CHECKOUT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def wheel_path(dist: Path) -> Path:
    return dist / f"{NAME_VERSION}-py3-none-any.whl"


def sdist_path(dist: Path) -> Path:
    return dist / f"{NAME_VERSION}.tar.gz"


def wheel_files(dist: Path) -> list[str]:
    with zipfile.ZipFile(wheel_path(dist)) as whl:
        return whl.namelist()


def sdist_files(dist: Path) -> list[str]:
    """The sdist's paths below its top directory."""
    with tarfile.open(sdist_path(dist)) as sdist:
        return [m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name]


def read_wheel(dist: Path, name: str) -> str:
    with zipfile.ZipFile(wheel_path(dist)) as whl:
        return whl.read(name).decode()


def read_sdist(dist: Path, name: str) -> str:
    with tarfile.open(sdist_path(dist)) as sdist:
        member = sdist.extractfile(f"{NAME_VERSION}/{name}")
        assert member is not None, name
        return member.read().decode()


def metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def matrix_of_the_noxfile() -> list[tuple[Any, ...]]:
    """noxfile.py's ``MATRIX`` (read, not imported: nox need not be installed)."""
    tree = ast.parse((CHECKOUT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "MATRIX":
            matrix: list[tuple[Any, ...]] = ast.literal_eval(node.value)
            return matrix
    raise AssertionError("noxfile.py has no MATRIX")


# --- metadata ------------------------------------------------------------------------------


def test_the_wheel_and_the_sdist_say_mit_and_need_django_only(dist: Path) -> None:
    from packaging.requirements import Requirement

    wheel_meta = read_wheel(dist, f"{NAME_VERSION}.dist-info/METADATA")
    assert read_sdist(dist, "PKG-INFO").split("\n\n")[0] == wheel_meta.split("\n\n")[0]
    meta = metadata(wheel_meta)
    assert meta["Name"] == "forksafe"
    assert meta["Version"] == forksafe.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    required = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    assert [str(r) for r in required if r.marker is None] == ["django>=4.2"], required
    # Every other dependency is an extra's.
    assert all("extra ==" in str(r.marker) for r in required if r.marker is not None), required


def test_the_classifiers_are_the_tested_matrix_and_known_to_pypi(dist: Path) -> None:
    from packaging.specifiers import SpecifierSet
    from trove_classifiers import classifiers as known

    meta = metadata(read_wheel(dist, f"{NAME_VERSION}.dist-info/METADATA"))
    classifiers = meta.get_all("Classifier") or []
    assert set(classifiers) <= known, set(classifiers) - known
    matrix = matrix_of_the_noxfile()
    pythons = sorted({row[0] for row in matrix}, key=lambda v: tuple(map(int, v.split("."))))
    djangos = sorted({row[1] for row in matrix}, key=lambda v: tuple(map(int, v.split("."))))
    assert [
        c.rsplit(" :: ", 1)[1] for c in classifiers if c.startswith("Framework :: Django ::")
    ] == djangos, classifiers
    assert [
        c.rsplit(" :: ", 1)[1]
        for c in classifiers
        if c.startswith("Programming Language :: Python :: 3.")
    ] == pythons, classifiers
    requires_python = SpecifierSet(meta["Requires-Python"])
    assert all(v in requires_python for v in pythons), meta["Requires-Python"]
    below = f"3.{int(pythons[0].split('.')[1]) - 1}"
    assert below not in requires_python, meta["Requires-Python"]


# --- contents ------------------------------------------------------------------------------


def test_the_wheel_holds_the_library_and_its_license_only(dist: Path) -> None:
    names = wheel_files(dist)
    info = f"{NAME_VERSION}.dist-info/"
    library = sorted(n for n in names if not n.startswith(info))
    package = CHECKOUT / "forksafe"
    expected = sorted(
        p.relative_to(CHECKOUT).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert library == expected
    assert "forksafe/py.typed" in names
    for name in names:
        parts = name.split("/")
        assert not {"tests", "benchmarks", "uwsgi_examples"} & set(parts), name
        assert not parts[-1].startswith(("test_", "conftest")), name
    assert read_wheel(dist, f"{info}licenses/LICENSE") == (CHECKOUT / "LICENSE").read_text()


def test_the_sdist_holds_the_license_and_what_the_tests_need(dist: Path) -> None:
    names = set(sdist_files(dist))
    for needed in (
        "LICENSE",
        "PKG-INFO",
        "pyproject.toml",
        "README.md",
        "noxfile.py",
        "forksafe/py.typed",
        "tests/conftest.py",
        "tests/test_packaging.py",
        "uwsgi_examples/run.py",
    ):
        assert needed in names, needed
    assert read_sdist(dist, "LICENSE") == (CHECKOUT / "LICENSE").read_text()
    license_text = (CHECKOUT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 forksafe developers\n")
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


# --- installed -----------------------------------------------------------------------------


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A venv at ``path`` with ``wheel`` installed, no extras, and this run's Django."""
    import django

    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    # The same Django as this run: the matrix row's, and most likely in pip's cache.
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-input",
            str(wheel),
            f"Django=={django.__version__}",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env={**clean_env(), "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "_forksafe_checkout_guard.py").write_text(_GUARD)
    (Path(purelib) / "_forksafe_checkout_guard.pth").write_text("import _forksafe_checkout_guard\n")
    return path


def clean_env() -> dict[str, str]:
    """This environment without what would reach the checkout or the test venv."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    return env


@pytest.mark.nodb
@pytest.mark.timeout(180)  # measured: ~25 s with Django in pip's cache
def test_the_wheel_in_a_fresh_venv_without_extras_runs_the_demo_and_doctor(
    dist: Path, tmp_path: Path
) -> None:
    start = time.monotonic()
    venv = fresh_venv(tmp_path / "venv", wheel_path(dist))
    installed = time.monotonic() - start
    log = tmp_path / "guard.jsonl"
    env = {**clean_env(), "FORKSAFE_CHECKOUT": str(CHECKOUT), "FORKSAFE_GUARD_LOG": str(log)}
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "forksafe"), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    # Not the checkout's: the extras are not there either.
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import forksafe, importlib.util as u; print(forksafe.__file__);"
            " print([m for m in ('dj_database_url', 'matplotlib', 'uwsgi_examples', 'tests')"
            " if u.find_spec(m)])",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    where, extras = probe.stdout.splitlines()
    assert Path(where).is_relative_to(venv), where
    assert extras == "[]", extras

    doctor = run("doctor", "--help")
    assert doctor.returncode == 0, doctor.stderr
    assert doctor.stdout.startswith("usage: forksafe doctor"), doctor.stdout
    assert "--settings MODULE" in doctor.stdout

    demo = run("demo")
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr, demo.stderr
    assert demo.stdout.startswith("forksafe demo on sqlite:///"), demo.stdout
    rows = scenario_verdicts(demo.stdout)
    assert len(rows) == 18, demo.stdout  # fork, pools and threads, two modes each
    for (title, mode), cells in rows.items():
        if mode == "forksafe":
            assert cells[-1] == "ok", (title, cells)
    assert rows[("8-worker executor, 200 tasks, shutdown()", "plain")][-1] == "BROKEN"
    assert f"skipped: {UWSGI_NEEDS_CHECKOUT}" in demo.stdout
    assert "RQ row skipped:" in demo.stdout
    assert "skipped: the ASGI rows count server sessions" in demo.stdout

    # Every interpreter of the venv reported (the demo's scenario processes too), none
    # with the checkout on its path or a module from it.
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    scenarios = [r for r in reports if r["argv"][0].endswith("_scenarios.py")]
    assert len(scenarios) >= 18, reports
    assert [r for r in reports if r["bad"]] == []
    print(f"fresh venv + install: {installed:.1f} s, total {time.monotonic() - start:.1f} s")
