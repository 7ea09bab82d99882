"""The README's example runs, and CI runs exactly the README's test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_example_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["draws"].shape == (100_000, 3)
    assert namespace["finite"].shape == (2_000, 3)
    assert len(namespace["table"]) == 6 and (namespace["table"]["kl"] > 0).all()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```\n(python3 -m venv .*?)\n```", README)
    assert len(commands) == 2, "the README gives exactly two copy-paste commands"
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    assert commands[0].endswith("netsor-limits kl")  # the main job is the CLI on its defaults
