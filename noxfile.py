"""Every way to build, test, benchmark and demo raindrops for Python.

``nox -l`` lists the sessions.  ``nox`` runs the default ones (lint, typing,
tests, build, integration).  ``nox -s bench`` and ``nox -s demo`` run on
request.  Arguments after ``--`` go to pytest (or to the demo).

Packages live in ``packages/<dist-name>/``; each names its own dependencies
in its ``pyproject.toml`` (runtime in ``[project]``, test and benchmark tools
in ``[dependency-groups]``).  Sibling packages are always installed from this
checkout, never from an index.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PACKAGES = ROOT / "packages"
INTEGRATION = ROOT / "integration"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
DEFAULT_PYTHON = "3.12"
# The counter core is the one package whose C must build on every Python.
ALL_PYTHONS_PACKAGES = {"shm-counters"}

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
# Skip (with nox's "interpreter not found" reason) a Python this machine lacks,
# also under CI=true, where nox would otherwise fail.
nox.options.error_on_missing_interpreters = False


def _expose_pyenv_pythons() -> None:
    """Let pyenv's shims answer ``python3.X`` for every installed 3.10-3.13.

    pyenv installs shims for every version but runs only the selected ones
    (``PYENV_VERSION``, which ``pyenv exec`` sets for nox itself), so nox
    would find ``python3.10`` on PATH and then fail to run it.
    """
    if shutil.which("pyenv") is None:
        return
    try:
        installed = subprocess.run(
            ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return
    current = (
        os.environ.get("PYENV_VERSION")
        or subprocess.run(
            ["pyenv", "version-name"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    chosen = [v for v in current.split(":") if v]
    for minor in PYTHONS:
        match = [v for v in installed if re.fullmatch(rf"{re.escape(minor)}\.\d+", v)]
        if match and match[-1] not in chosen:
            chosen.append(match[-1])
    if chosen:
        os.environ["PYENV_VERSION"] = ":".join(chosen)


_expose_pyenv_pythons()

# Every default session runs on DEFAULT_PYTHON: without it CI would "pass"
# having skipped everything, so say so and stop instead.
if os.environ.get("CI") and shutil.which(f"python{DEFAULT_PYTHON}") is None:
    raise SystemExit(f"python{DEFAULT_PYTHON} is needed and is not on PATH")
if os.environ.get("CI"):
    _probe = subprocess.run(
        [f"python{DEFAULT_PYTHON}", "-c", "pass"], capture_output=True, check=False
    )
    if _probe.returncode != 0:
        raise SystemExit(f"python{DEFAULT_PYTHON} does not run: {_probe.stderr.decode()}")


def _pyproject(dist: str) -> dict:  # type: ignore[type-arg]
    return nox.project.load_toml(PACKAGES / dist / "pyproject.toml")


def _packages() -> list[str]:
    """Every package folder, by distribution name."""
    return sorted(p.parent.name for p in PACKAGES.glob("*/pyproject.toml"))


def _local_requirements(dist: str) -> list[str]:
    """``dist``'s local siblings, transitively, leaves first, then ``dist``."""
    local = set(_packages())
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for req in _pyproject(name)["project"].get("dependencies", []):
            dep = re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower()
            if dep in local:
                visit(dep)
        order.append(name)

    visit(dist)
    return order


def _install_local(session: nox.Session, *dists: str, groups: tuple[str, ...] = ()) -> None:
    """Install ``dists`` and their local siblings from this checkout, plus groups."""
    wanted: list[str] = []
    for dist in dists:
        for name in _local_requirements(dist):
            if name not in wanted:
                wanted.append(name)
    extra: list[str] = []
    for dist in dists:
        pyproject = _pyproject(dist)
        for group in groups:
            if group in pyproject.get("dependency-groups", {}):
                extra += nox.project.dependency_groups(pyproject, group)
    session.install(*(str(PACKAGES / name) for name in wanted), *extra)


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run(
        "pytest",
        "-c",
        str(ROOT / "pyproject.toml"),
        "--rootdir",
        str(ROOT),
        *paths,
        *session.posargs,
    )


def _tests_matrix() -> list[nox.param]:  # type: ignore[name-defined]
    params = []
    for dist in _packages():
        pythons = PYTHONS if dist in ALL_PYTHONS_PACKAGES else [DEFAULT_PYTHON]
        params += [nox.param(py, dist, id=f"{py}-{dist}") for py in pythons]
    return params


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check over the whole tree."""
    session.install("ruff>=0.17,<0.18")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=DEFAULT_PYTHON)
@nox.parametrize("package", _packages())
def typing(session: nox.Session, package: str) -> None:
    """Mypy --strict over one package's sources, against its installed siblings."""
    _install_local(session, package, groups=("typing",))
    session.install("mypy")
    config = str(ROOT / "pyproject.toml")
    session.run("mypy", "--config-file", config, str(PACKAGES / package / "src"))


@nox.session
@nox.parametrize(("python", "package"), _tests_matrix())
def tests(session: nox.Session, package: str) -> None:
    """One package's tests against its installed copy (the counter core on 3.10-3.13)."""
    _install_local(session, package, groups=("test",))
    _pytest(session, str(PACKAGES / package / "tests"))


@nox.session(python=DEFAULT_PYTHON)
def integration(session: nox.Session) -> None:
    """End-to-end tests under real gunicorn, uvicorn and hypercorn servers."""
    _install_integration(session)
    _pytest(session, "-m", "not browser", str(INTEGRATION))


@nox.session(python=DEFAULT_PYTHON)
def browser(session: nox.Session) -> None:
    """The Watcher's pages rendered by headless Chromium (Debian's chromium package)."""
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            session.error("chromium is not installed: .ci/run installs it with apt-get")
        session.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    _install_integration(session)
    _pytest(session, "-m", "browser", str(INTEGRATION))


def _install_integration(session: nox.Session) -> None:
    _install_local(session, *_packages())
    group = nox.project.dependency_groups(
        nox.project.load_toml(INTEGRATION / "pyproject.toml"), "integration"
    )
    session.install(*group)


@nox.session(python=DEFAULT_PYTHON)
@nox.parametrize("package", _packages())
def build(session: nox.Session, package: str) -> None:
    """Build the sdist, a wheel from that sdist, and import the installed wheel."""
    session.install("build")
    with tempfile.TemporaryDirectory(prefix="rd-build-") as tmp:
        # `python -m build` makes the sdist, then builds the wheel from the
        # unpacked sdist: a C file missing from the sdist fails right here.
        session.run("python", "-m", "build", "--outdir", tmp, str(PACKAGES / package))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            session.error(f"expected one wheel for {package}, found {wheels}")
        siblings = [str(PACKAGES / n) for n in _local_requirements(package)[:-1]]
        if siblings:
            session.install(*siblings)
        session.install(str(wheels[0]))
        module = package.replace("-", "_")
        smoke = SMOKE.get(package, f"import {module}")
        # Run from an empty directory so the wheel, not the source tree, is imported.
        session.chdir(tmp)
        session.run("python", "-c", smoke)
        session.chdir(str(ROOT))


SMOKE = {
    "shm-counters": (
        "import shm_counters as s; c = s.Counters(2); "
        "assert (c.incr(1), c.decr(0), c[1]) == (1, s.MAX, 1), c.to_list(); "
        "print('shm_counters', s.__version__, 'ok')"
    ),
}


@nox.session(python=DEFAULT_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks of every package against their peers, as ratios in one run."""
    _install_local(session, *_packages(), groups=("bench",))
    scripts = sorted(PACKAGES.glob("*/bench/bench_*.py")) + sorted(INTEGRATION.glob("bench_*.py"))
    wanted = session.posargs
    for script in scripts:
        if wanted and not any(w in str(script) for w in wanted):
            continue
        session.log(f"== {script.relative_to(ROOT)}")
        session.run("python", str(script))


@nox.session(python=DEFAULT_PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """Live demo: gunicorn workers under load, their /_raindrops numbers in the terminal."""
    _install_local(session, *_packages())
    session.install("gunicorn")
    session.run("python", str(INTEGRATION / "demo.py"), *session.posargs)
