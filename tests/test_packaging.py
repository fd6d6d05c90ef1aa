"""The install story: the wheel carries the configs, the Dockerfile copies files that exist."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_wheel_ships_the_hydra_configs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("trainer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("trainer/conf/") for n in names if n.startswith("trainer/conf/")}
    expected = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert expected and expected <= shipped
    sources = {str(p.relative_to(REPO)) for p in (REPO / "trainer").rglob("*.py")}
    assert "trainer/schedules/formulas.py" in sources and sources <= names  # every module, in every package


def test_dockerfile_copies_existing_files_and_runs_the_cli():
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines() if line.strip()]
    instructions = [words for words in lines if not words[0].startswith("#")]
    base = next(words for words in instructions if words[0] == "FROM")
    assert "cuda" in base[1]
    for words in instructions:
        if words[0] == "COPY":
            for source in words[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    assert ["ENTRYPOINT", '["python",', '"-m",', '"trainer"]'] in instructions
    assert any(w[0] == "RUN" and "pip install" in " ".join(w) and "trainer --help" in " ".join(w) for w in instructions)


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2  # one to run the main job, one to run the tests
    assert commands[0].endswith("python -m trainer")
    ci_lines = (REPO / ".ci/run").read_text().splitlines()
    assert commands[1] in ci_lines
