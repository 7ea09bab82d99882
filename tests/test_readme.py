"""The README's example runs, and CI runs exactly the README's test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


NUMBER = re.compile(r"[−-]?\d+(?:\.\d+)?(?:e[−-]?\d+)?")


def _value(text: str) -> float:
    return float(text.replace("−", "-"))


def test_readme_example_runs_and_prints_what_it_says(capsys):
    """The example as written; every "# → ..." comment is what the line above prints: each of its numbers is a
    printed number rounded to the digits the comment shows."""
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["draws"].shape == (100_000, 3)
    assert namespace["finite"].shape == (2_000, 3)
    assert len(namespace["table"]) == 6 and (namespace["table"]["kl"] > 0).all()
    printed = [_value(v) for v in NUMBER.findall(capsys.readouterr().out)]
    claims = [line.split("# →", 1)[1] for line in code.splitlines() if line.lstrip().startswith("# →")]
    assert len(claims) >= 2
    for claim in claims:
        for text in NUMBER.findall(claim):
            digits = len(text.split(".")[1]) if "." in text else 0
            assert any(abs(p - _value(text)) <= 0.5 * 10 ** -digits + 1e-12 for p in printed), (claim, text)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```\n(python3 -m venv .*?)\n```", README)
    assert len(commands) == 2, "the README gives exactly two copy-paste commands"
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    assert commands[0].endswith("netsor-limits kl")  # the main job is the CLI on its defaults
