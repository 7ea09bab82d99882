"""`python -m limits ...` is the `netsor-limits` command line (see limits.cli)."""
from .cli import run

if __name__ == "__main__":
    run()
