"""The READMEs' quick starts run as written: their install lines, files, commands and output.

The blocks are taken from the READMEs verbatim (see ``quickstart.py`` for
the marks); their text is pinned here by digest, so a quick start that
changes without this test fails until the test is looked at again. The
install lines run first, in a fresh virtual environment, from the root of
the checkout; then each README's files and commands run in a directory of
their own, in a network namespace of their own (where ``unshare`` may be
used), so the ports they name are theirs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from quickstart import Block, blocks, commands, run_isolated

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(sys.platform != "linux", reason="needs Linux"),
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parent.parent
READMES = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("packages/*/README.md")),
]

#: Every quick-start block, pinned: README -> [(kind, argument, sha256 of the text)].
PINNED: dict[str, list[tuple[str, str, str]]] = {
    "README.md": [
        ("install", "", "3704e23afd9f8483299d7f4510396b5942261a6ac037f887c51564590da57262"),
        ("install", "", "d25d67c2051a00ff5e6c389211eacfada663df1325b4bd3f7f253a93a7e356fa"),
        ("file", "app.py", "1cfb93b8a7027f260b520645d8e34dd5367b70c4c0f6b1ef1fec65776a626efd"),
        ("console", "", "b093fc384d3d2485c768455bb29fa9c8a3a14a882c0791c6ada4f0d252a3f0e3"),
        ("file", "main.py", "95c31b29a1ddb558614979d5720ed73236b1b64d22e526195bc6f7214ea8c688"),
        ("console", "", "9bb44fc7d5f222b5db7941a02c74f35bf201e70f84f448fbf5d3c745d5c9eaa9"),
    ],
    "packages/linux-inet-diag/README.md": [
        ("install", "", "8dbf8fcdaf6b80216d2351036270b0ab6089a006dd55bcc1bd5655ab2a3f6128"),
        ("doctest", "", "9d2739ad60e57a990ec211a964cb9e6e4df255be233058cac70ee357f4bd6824"),
    ],
    "packages/process-utilization/README.md": [
        ("install", "", "914ef9e5051501c47dd779774aff7ac0873a30b6c3df73afa75925f1b73cfda5"),
        ("file", "app.py", "f8708aa481658944ecfd0b6c4aa36ca4a75eaf8b5edb8390374a476f3fd98bcc"),
        ("console", "", "f7ea8d06a588374db4ec2b55349a5f4e156ad098073f40b51a78a6f7b1da8e49"),
    ],
    "packages/prometheus-shm/README.md": [
        ("install", "", "9479110d8b8e287a44b149aff662911bbe12704874aa7b177c04c0b398fdf3d1"),
        (
            "file",
            "gunicorn.conf.py",
            "be2c32561dc8ce6998373bef60f06d3d926020c65f8d07a04d3866df88061b50",
        ),
        ("file", "app.py", "6768570b2c1fd9daaf8c22175fb54aa5d01c8b018cb500c4cca0fd1a7b425415"),
        ("console", "", "96154aa49e22fada02c6e04da00a00c75d71fa6bc3054cbb11254f91d8b6fc63"),
        ("file", "main.py", "845ac197c11301bdcae86de51af5ef38440ec2a88d66798c5bb8db877a959857"),
        ("console", "", "17833caaa6b13955101119c3fbb4c816876017273c1bd12ae095437bc1f5bbfc"),
    ],
    "packages/raindrops-asgi/README.md": [
        ("install", "", "cbf0267f368e6425bb78d712cf47e50dd710f047a610ef3887c36d3b4db3001b"),
        ("file", "main.py", "bd9c2c2db0741859533c35f525e23d1844adeb2e2abfc780f767d6248964da29"),
        ("console", "", "908414d2fa92e9f51eea91a2a80f5c6cb1a87390a5daf495dbbf3244e07a2c83"),
    ],
    "packages/raindrops-core/README.md": [
        ("install", "", "debcd0923b70fbefc8b1e6973e596696043cb55b806730d8ed8be5333238cdc0"),
        ("doctest", "", "3a90510da823f90a3f505b870385abcdec3f4579295500ad7248f76361043dc6"),
    ],
    "packages/raindrops-exporter/README.md": [
        ("install", "", "1a61ab8768e1e21d2465c042910d605932477f9b14e49387bbc8f68e9a85a501"),
        ("file", "app.py", "8189b266d4556b3b53f0cf3e57addbecf4b75e5bfeac7e6cfe3437c1a3185b7a"),
        (
            "file",
            "gunicorn.conf.py",
            "33e9ea4d0975eb95ad8c6220b16f5402dc3637c548762026a74d76ceb615bf0c",
        ),
        ("console", "", "25f8311c8d8d1016f75bff9a7ea7191aa0613c1f35e78182981936dc30e5402d"),
    ],
    "packages/raindrops-wsgi/README.md": [
        ("install", "", "0d95ddf249a01e87f5f2095773ef42d3f9d3ae417fc5947303f706030304e008"),
        ("file", "app.py", "2e0aa2ec4167d5efb99c21c51acb32a42b299ae4c12dbc7644fa6b3c8b111ca4"),
        ("console", "", "a128026601f46d1fd066c36ed4bc82f8ecc9f84e480ab8620891717d6b9cd206"),
    ],
    "packages/shm-counters/README.md": [
        ("install", "", "9dc4780a744e2993d7632637a6bb9dfecfa64e1ef900349249349abf6591a238"),
        ("doctest", "", "bcf3979aee4ac640b0561182516fabde9fbc6fc4402aa5662bc9064226bd4592"),
    ],
}


def _digest(block: Block) -> str:
    return hashlib.sha256(block.text.encode()).hexdigest()


def test_every_readme_has_a_pinned_quick_start() -> None:
    """Each README's marked blocks are exactly the ones pinned here (text digests)."""
    problems = []
    for name in READMES:
        found = [(b.kind, b.arg, _digest(b)) for b in blocks(ROOT / name)]
        if not any(kind != "install" for kind, _, _ in found):
            problems.append(f"{name}: no quick start marked")
        if found != PINNED.get(name):
            problems.append(f"{name}: quick start changed; its blocks are now\n    {found!r}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding what every README's install lines install."""
    where = tmp_path_factory.mktemp("readme-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    env = _env(where)
    for name in READMES:
        for block in blocks(ROOT / name):
            if block.kind != "install":
                continue
            for cmd in commands(block):
                proc = subprocess.run(
                    ["bash", "-c", cmd.line],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
                assert proc.returncode == 0, f"{name}: {cmd.line}\n{proc.stdout}{proc.stderr}"
    return where


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAINDROPS_", "PROCESS_"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.parametrize("name", READMES)
def test_quick_start_runs_as_written(name: str, venv: Path, tmp_path: Path) -> None:
    """Every file, command and shown output of the README's quick start, for real."""
    steps = [b for b in blocks(ROOT / name) if b.kind != "install"]
    plan = {
        "workdir": str(tmp_path),
        "env": _env(venv),
        "blocks": [{"kind": b.kind, "arg": b.arg, "text": b.text, "line": b.line} for b in steps],
    }
    results = run_isolated(plan, str(venv / "bin" / "python"))
    failed = [r for r in results if not r.ok]
    report = "\n\n".join(
        f"{name}:{r.block_line}: $ {r.command}\n--- shown:\n{r.want}--- printed:\n{r.got}"
        for r in failed
    )
    assert not failed, report
    assert [r for r in results if not r.command.startswith("(log of")], "nothing ran"
