"""`netsor-limits`: the attention layer's limit from the command line.

    netsor-limits kl        KL(finite n ‖ limit) against width: table, CSV and figure in ./netsor-results/
    netsor-limits sample    finite-width (--width) or limit draws of the outputs, as CSV
    netsor-limits describe  the limit law as formulas

Bad options or values print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from netsor import ProgramError

DEFAULT_WIDTHS = (16, 64, 256, 1024, 4096)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse's default prints the usage block first)
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def _comma_ints(text: str, minimum: int, kind: str, malformed: str) -> list[int]:
    """Comma-separated integers ≥ minimum ("16,64" or "3,"); `kind` and `malformed` word the two errors."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {malformed}, got {text!r}") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    return _comma_ints(text, 1, "positive integers", "comma-separated integers")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _heads(text: str):
    return math.inf if text.lower() in ("inf", "infinity") else _positive(text)


def _seeds(text: str):
    """A count ("10") or a list of seeds ("3," or "0,5,7")."""
    if "," not in text:
        return _positive(text)
    return _comma_ints(text, 0, "non-negative seeds", "a count or comma-separated seeds")


def parser() -> argparse.ArgumentParser:
    from .divergence import METHODS
    from .sweep import BACKENDS

    top = _Parser(prog="netsor-limits", description="Infinite-width limits of attention layers: KL(finite width "
                  "‖ limit), samples and the law, for attention_layer(seq_len, heads, head_dim, scaling, inputs).")
    commands = top.add_subparsers(dest="command", metavar="{kl,sample,describe}", parser_class=_Parser)

    def layer_options(p):
        g = p.add_argument_group("layer")
        g.add_argument("--seq-len", type=_positive, default=4, help="tokens s (default 4)")
        g.add_argument("--heads", type=_heads, default=2, help="heads H, or inf (default 2)")
        g.add_argument("--head-dim", type=_positive, default=None, help="fixed head dimension N (default: n)")
        g.add_argument("--scaling", choices=("sqrt", "linear"), default="sqrt", help="score scaling (default sqrt)")
        g.add_argument("--inputs", choices=("paper", "relu", "gaussian"), default="paper",
                       help="tokens: paper = clip(W^i h) (SKI25), relu, gaussian (default paper)")
        g.add_argument("--output", type=int, default=0, help="which output y_{i+1} (default 0: y1)")

    kl = commands.add_parser("kl", help="KL(finite n ‖ limit) against width, with the fitted decay exponent")
    layer_options(kl)
    kl.add_argument("--widths", type=_int_list, default=list(DEFAULT_WIDTHS),
                    help="comma-separated widths (default 16,64,256,1024,4096)")
    kl.add_argument("--size", type=_positive, default=20_000, help="networks per width and seed (default 20000)")
    kl.add_argument("--seeds", type=_seeds, default=2, help="a count, or comma-separated seeds (default 2)")
    kl.add_argument("--estimator", choices=METHODS, default="mixture", help="KL estimator (default mixture)")
    kl.add_argument("--backend", choices=BACKENDS, default="local", help="local (default) or dask")
    kl.add_argument("--scheduler", default=None, help="dask scheduler address (default: a 2-worker LocalCluster)")
    kl.add_argument("--out", type=Path, default=Path("netsor-results"), help="output folder (default ./netsor-results)")
    kl.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser("sample", help="draws of the outputs at a width, or of the limit, as CSV")
    layer_options(sample)
    sample.add_argument("--width", type=_positive, default=None, help="finite width n (default: the limit)")
    sample.add_argument("--size", type=_positive, default=10_000, help="draws (default 10000)")
    sample.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    sample.add_argument("--out", type=Path, default=Path("netsor-results"), help="output folder")

    describe = commands.add_parser("describe", help="print the limit law as formulas")
    layer_options(describe)
    describe.add_argument("--latex", action="store_true", help="LaTeX instead of plain text")
    return top


def _layer(args):
    from .attention import attention_layer
    return attention_layer(seq_len=args.seq_len, heads=args.heads, head_dim=args.head_dim, scaling=args.scaling,
                           inputs=args.inputs)


def _output(layer, index: int):
    if not 0 <= index < len(layer.outputs):
        raise ProgramError(f"--output must be in 0..{len(layer.outputs) - 1}, got {index}")
    return layer.outputs[index]


def _kl(args) -> None:
    from . import plot
    from .sweep import fit_rate, kl_vs_width

    layer = _layer(args)
    start = time.perf_counter()
    common = dict(size=args.size, seeds=args.seeds, estimator=args.estimator, backend=args.backend,
                  client=args.scheduler, out_dir=args.out, progress=not args.no_progress)
    if layer.infinite_heads:
        raise ProgramError("--heads inf has no finite width; give a number of heads")
    df = kl_vs_width(layer, [_output(layer, args.output)], args.widths, **common)
    print(f"KL(finite n ‖ limit) of {layer.outputs[args.output].name}: seq_len={args.seq_len} heads={args.heads} "
          f"head_dim={args.head_dim or 'n'} scaling={args.scaling} inputs={args.inputs}, {args.estimator}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    try:
        fit = fit_rate(df)
        print(fit)
    except ProgramError as e:
        fit = None
        print(f"no decay fit: {e}")
    plot.kl_vs_width(df, fit=fit if fit is not None else False, path=args.out / "kl_vs_width")
    print(f"wrote {args.out / 'kl_vs_width.csv'}, {args.out / 'kl_vs_width.png'} (and .pdf) "
          f"in {time.perf_counter() - start:.1f} s")


def _sample(args) -> None:
    import pandas as pd
    layer = _layer(args)
    if args.width is None:
        law = layer.law()
        draws = law.sample(args.size, args.seed) if layer.infinite_heads else law.sample(layer.outputs, args.size,
                                                                                          args.seed)
        kind = "limit"
    else:
        draws = layer.simulate(args.width, args.size, args.seed)
        kind = f"n{args.width}"
    df = pd.DataFrame(np.asarray(draws), columns=[v.name for v in layer.outputs])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"samples_{kind}.csv"
    df.to_csv(path, index=False)
    print(df.describe().loc[["mean", "std"]].to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {len(df)} draws to {path}")


def _describe(args) -> None:
    layer = _layer(args)
    law = layer.law()
    print(law.describe() if layer.infinite_heads else law.describe(layer.outputs, latex=args.latex))


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        if args.command is None:
            raise _UsageError("netsor-limits: error: choose a command: kl, sample or describe (see --help)")
        {"kl": _kl, "sample": _sample, "describe": _describe}[args.command](args)
    except (_UsageError, ProgramError) as e:
        message = str(e) if isinstance(e, _UsageError) else f"netsor-limits: error: {e}"
        print(message.splitlines()[0] if message else "netsor-limits: error", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netsor-limits: interrupted (finished tasks are kept in the output folder)", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
