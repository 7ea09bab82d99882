"""`netsor-limits`: the attention layer's limit from the command line.

    netsor-limits kl        KL(finite n ‖ limit) against width: table, CSV and figure in ./netsor-results/
                            (--predict: with KL = c/n² from the first finite-width correction)
    netsor-limits sample    finite-width (--width) or limit draws of the outputs, as CSV
    netsor-limits describe  the limit law as formulas

Bad options or values print one line and exit with code 2; Ctrl-C prints one line and exits with code 130.
"""
from __future__ import annotations

# only light modules here: numpy, numba and netsor load inside main(), where a Ctrl-C is caught like any other
import argparse
import os
import signal
import sys

DEFAULT_WIDTHS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)  # 16 … 2^20: coupled draws resolve all
DEFAULT_PREDICT_SIZE = 1 << 15  # --predict: a KL constant to about 2% (Gaussian tokens) in a second or two
MAX_SCORES = 1 << 20  # heads × seq_len² attention scores: a larger layer takes hours to derive, so it is a typo
INTERRUPTED = "netsor-limits: interrupted"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse's default prints the usage block first)
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def _power(maximum: int) -> str:
    return f"2^{maximum.bit_length() - 1}"


def _integer(text: str, minimum: int, maximum: int | None, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:  # also a string of more digits than int() reads
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"expected at most {_power(maximum)}, got {text}")
    return value


def _comma_ints(text: str, minimum: int, maximum: int | None, kind: str, malformed: str) -> list[int]:
    """Distinct comma-separated integers in minimum..maximum ("16,64" or "3,"); `kind` and `malformed` word the
    errors."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {malformed}, got {text!r}") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    if maximum is not None and max(values) > maximum:
        raise argparse.ArgumentTypeError(f"expected values at most {_power(maximum)}, got {max(values)}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:  # a repeated width or seed would be a repeated row, not more data
        raise argparse.ArgumentTypeError(f"{', '.join(map(str, repeated))} repeated in {text!r}")
    return values


def _positive(maximum: int | None = None):
    return lambda text: _integer(text, 1, maximum, "a positive integer")


def _heads(text: str):
    import math
    return math.inf if text.strip().lower() in ("inf", "infinity") else _integer(text, 1, None, "a positive integer")


def _folder(text: str):
    from pathlib import Path
    if not text.strip():  # Path("") is the current folder: never what an empty value meant
        raise argparse.ArgumentTypeError("expected a folder, got ''")
    return Path(text)


def _address(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a scheduler address such as tcp://host:8786, got ''")
    return text.strip()


def _positive_real(text: str) -> float:
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    from .divergence import METHODS
    from .positions import KINDS as POSITIONAL_KINDS
    from .score_maps import SCORE_MAPS
    from .sweep import BACKENDS, MAX_SEEDS, MAX_WIDTH

    def widths(text):
        return _comma_ints(text, 1, MAX_WIDTH, "positive integers", "comma-separated integers")

    def seeds(text):
        """A count ("10") or a list of seeds ("3," or "0,5,7")."""
        if "," not in text:
            return _integer(text, 1, MAX_SEEDS, "a positive integer")
        return _comma_ints(text, 0, None, "non-negative seeds", "a count or comma-separated seeds")

    top = _Parser(prog="netsor-limits", description="Infinite-width limits of attention layers: KL(finite width "
                  "‖ limit), samples and the law, for attention_layer(seq_len, heads, head_dim, scaling, inputs).")
    commands = top.add_subparsers(dest="command", metavar="{kl,sample,describe}", parser_class=_Parser)

    def layer_options(p, output_default: str):
        g = p.add_argument_group("layer")
        g.add_argument("--seq-len", type=_positive(), default=4, help="tokens s (default 4)")
        g.add_argument("--heads", type=_heads, default=2, help="heads H, or inf (default 2)")
        g.add_argument("--head-dim", type=_positive(MAX_WIDTH), default=None,
                       help="fixed head dimension N (default: n)")
        g.add_argument("--scaling", choices=("sqrt", "linear"), default="sqrt", help="score scaling (default sqrt)")
        g.add_argument("--inputs", choices=("paper", "relu", "gaussian"), default="paper",
                       help="tokens: paper = clip(W^i h) (SKI25), relu, gaussian (default paper)")
        g.add_argument("--output", type=lambda t: _integer(t, 0, None, "a non-negative integer"), default=None,
                       help=f"which output y_{{i+1}} (default {output_default})")
        v = p.add_argument_group("attention variants")
        v.add_argument("--mask", choices=("none", "causal"), default="none", help="score mask (default none)")
        v.add_argument("--kv-len", type=_positive(), default=None,
                       help="cross-attention: keys and values from t further tokens (default: self-attention)")
        v.add_argument("--score-map", choices=tuple(SCORE_MAPS), default="softmax",
                       help="scores to weights: softmax, linear (no normalisation), relu or sigmoid (÷ keys)")
        v.add_argument("--temperature", type=_positive_real, default=1.0, help="logits p/τ (default 1)")
        v.add_argument("--alibi", type=_positive_real, default=None, metavar="SLOPE",
                       help="ALiBi biases −SLOPE·|i − j| on the logits (default none)")
        v.add_argument("--value-nonlinearity", default=None, metavar="PHI",
                       help="φ on the values: relu, tanh, erf, gelu, clip(c), … (default none)")
        v.add_argument("--tied-qk", action="store_true", help="W_K = W_Q (needs --scaling linear or --head-dim)")
        v.add_argument("--positional", choices=("none",) + POSITIONAL_KINDS, default="none",
                       help="gaussian tokens plus positional encodings, through their covariance (default none)")

    kl = commands.add_parser("kl", help="KL(finite n ‖ limit) against width, with the fitted decay exponent")
    layer_options(kl, "0: y1")
    kl.add_argument("--widths", type=widths, default=list(DEFAULT_WIDTHS),
                    help="comma-separated widths (default 16,64,…,2^20: powers of 4)")
    kl.add_argument("--size", type=lambda t: _integer(t, 2, None, "an integer ≥ 2"), default=20_000,
                    help="networks per width and seed (default 20000)")
    kl.add_argument("--seeds", type=seeds, default=2, help="a count, or comma-separated seeds (default 2)")
    kl.add_argument("--estimator", choices=METHODS, default="coupled",
                    help="KL estimator (default coupled: finite and limit draws from common random numbers)")
    kl.add_argument("--backend", choices=BACKENDS, default="local", help="local (default) or dask")
    kl.add_argument("--scheduler", type=_address, default=None,
                    help="dask scheduler address, with --backend dask (default: a 2-worker LocalCluster)")
    kl.add_argument("--out", type=_folder, default="netsor-results",
                    help="output folder (default ./netsor-results)")
    kl.add_argument("--no-progress", action="store_true", help="no progress bar")
    kl.add_argument("--open", action="store_true", help="open the figure in the system's viewer when written")
    kl.add_argument("--predict", action="store_true",
                    help="also compute KL = c/n² from the first finite-width correction and compare")
    kl.add_argument("--predict-size", type=_positive(), default=None,
                    help=f"draws of the limit's randomness for --predict (default {DEFAULT_PREDICT_SIZE})")

    sample = commands.add_parser("sample", help="draws of the outputs at a width, or of the limit, as CSV")
    layer_options(sample, "all")
    sample.add_argument("--width", type=_positive(MAX_WIDTH), default=None, help="finite width n (default: the limit)")
    sample.add_argument("--size", type=_positive(), default=10_000, help="draws (default 10000)")
    sample.add_argument("--seed", type=lambda t: _integer(t, 0, None, "a non-negative integer"), default=0,
                        help="seed (default 0)")
    sample.add_argument("--out", type=_folder, default="netsor-results", help="output folder")

    describe = commands.add_parser("describe", help="print the limit law as formulas")
    layer_options(describe, "all")
    describe.add_argument("--latex", action="store_true", help="LaTeX instead of plain text")
    return top


def _layer(args):
    import math

    from netsor import ProgramError

    from .attention import attention_layer
    from .positions import positional
    from .score_maps import alibi
    keys = args.seq_len if args.kv_len is None else args.kv_len
    scores = (1 if math.isinf(args.heads) else args.heads) * args.seq_len * keys
    if scores > MAX_SCORES:
        kv = "" if args.kv_len is None else f" --kv-len {keys}"
        raise ProgramError(f"--heads {args.heads} and --seq-len {args.seq_len}{kv} make {scores:.3g} attention scores, "
                           f"more than this command builds ({_power(MAX_SCORES)})")
    inputs = args.inputs
    if args.positional != "none":
        if inputs != "gaussian":
            raise ProgramError("--positional adds encodings to gaussian tokens: use it with --inputs gaussian")
        inputs = positional(args.seq_len + (0 if args.kv_len is None else keys), args.positional)
    return attention_layer(seq_len=args.seq_len, heads=args.heads, head_dim=args.head_dim, scaling=args.scaling,
                           inputs=inputs, mask=None if args.mask == "none" else args.mask, kv_len=args.kv_len,
                           score_map=args.score_map, temperature=args.temperature,
                           score_bias=None if args.alibi is None else alibi(args.seq_len, args.alibi, keys),
                           value_nonlinearity=args.value_nonlinearity, tied_qk=args.tied_qk)


def _positions(layer, index: int | None) -> list[int]:
    """The outputs `--output` selects: that one, or all (None)."""
    from netsor import ProgramError
    count = len(layer.outputs)
    if index is None:
        return list(range(count))
    if not 0 <= index < count:
        raise ProgramError(f"--output must be in 0..{count - 1} (the layer has {count} outputs), got {index}")
    return [index]


def _prepare(folder) -> None:
    """Create --out and check a file can be written there, before any work."""
    import tempfile

    from netsor import ProgramError
    if folder.exists() and not folder.is_dir():
        raise ProgramError(f"--out {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ProgramError(f"--out {folder}: cannot write there ({e.strerror or e})") from None


def _kl(args) -> None:
    import time

    from netsor import ProgramError

    from . import plot
    from .sweep import _connect, fit_constant, fit_rate, kl_vs_width, local_slopes

    if args.scheduler is not None and args.backend != "dask":
        raise ProgramError("--scheduler needs --backend dask")
    if args.predict_size is not None and not args.predict:
        raise ProgramError("--predict-size needs --predict")
    layer = _layer(args)
    if layer.infinite_heads:
        raise ProgramError("--heads inf has no finite width; give a number of heads")
    (index,) = _positions(layer, 0 if args.output is None else args.output)
    _prepare(args.out)
    start = time.perf_counter()
    # before the sweep: a program the correction refuses costs nothing
    prediction = _predict(layer, index, args.predict_size or DEFAULT_PREDICT_SIZE) if args.predict else None
    client = None if args.scheduler is None else _connect(args.scheduler, "--scheduler")
    try:
        df = kl_vs_width(layer, [layer.outputs[index]], args.widths, size=args.size, seeds=args.seeds,
                         estimator=args.estimator, backend=args.backend, client=client, out_dir=args.out,
                         progress=not args.no_progress)
    except ProgramError as e:
        # the sweep names its folder out_dir; on the command line it is --out
        text = str(e)
        raise ProgramError("--out" + text[len("out_dir"):] if text.startswith("out_dir ") else text) from None
    finally:
        if client is not None:
            client.close()
    print(f"KL(finite n ‖ limit) of {layer.outputs[index].name}: {layer.summary}; {args.estimator}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    try:
        fit = fit_rate(df)
        print(fit)
        slopes = local_slopes(df)
        print("local slope −Δlog KL/Δlog n: " + ", ".join(
            f"{a:.0f}→{b:.0f}: {v:.2f} ± {e:.2f}" for a, b, v, e in slopes[["from", "to", "slope", "se"]].to_numpy()))
    except ProgramError as e:
        fit = None
        print(f"no decay fit: {e}")
    if prediction is not None:
        c, se, how = prediction
        print(f"predicted by the first finite-width correction ({how}): KL = c/n² + o(n⁻²), c = {c:.4g} ± {se:.2g}")
        try:
            print(fit_constant(df, prediction=(c, se)))
        except ProgramError as e:
            print(f"no measured constant: {e}")
    try:
        plot.kl_vs_width(df, fit=fit if fit is not None else False, path=args.out / "kl_vs_width",
                         predicted=None if prediction is None else prediction[:2],
                         title=f"KL(finite n ‖ limit) of {layer.outputs[index].name}, {layer.summary}")
    except OSError as e:
        raise ProgramError(f"--out {args.out}: cannot write the figure ({e.strerror or e})") from None
    figure = args.out / "kl_vs_width.png"
    print(f"wrote {args.out / 'kl_vs_width.csv'}, {figure} (and .pdf) in {time.perf_counter() - start:.1f} s")
    if args.open:
        _open(figure)


def _open(path) -> None:
    """Show a written figure in the system's viewer (or browser); say where it is when none can be reached."""
    import webbrowser
    try:
        opened = webbrowser.open(path.resolve().as_uri())
    except Exception:  # noqa: BLE001 - any viewer failure is reported, never raised
        opened = False
    print(f"opened {path}" if opened else f"no viewer to open {path} here; open that file yourself")


def _predict(layer, index: int, size: int) -> tuple[float, float, str]:
    """(c, se, how) of KL = c/n² for the measured output, from `netsor.finite_width_correction` (seed 0)."""
    import netsor
    from netsor import ProgramError
    try:
        correction = netsor.finite_width_correction(layer.program, [layer.outputs[index]], size=size, seed=0)
        c, se = correction.kl_constant()
    except ProgramError as e:
        raise ProgramError(f"--predict: {e}") from None
    if not c > 0:  # Monte Carlo noise around a constant near 0: no line c/n² to draw, no ratio to take
        raise ProgramError(f"--predict: the correction gives c = {c:.3g} ± {se:.2g}, not a positive constant")
    return c, se, "exact" if correction.exact else f"Monte Carlo, {correction.size} draws"


def _sample(args) -> None:
    import numpy as np
    import pandas as pd

    from netsor import ProgramError

    layer = _layer(args)
    positions = _positions(layer, args.output)
    _prepare(args.out)
    if args.width is None:
        draws = layer.law().sample(layer.outputs, args.size, args.seed)
        kind = "limit"
    else:
        draws = layer.simulate(args.width, args.size, args.seed)
        kind = f"n{args.width}"
    df = pd.DataFrame(np.asarray(draws)[:, positions], columns=[layer.outputs[i].name for i in positions])
    path = args.out / f"samples_{kind}.csv"
    try:
        df.to_csv(path, index=False)
    except OSError as e:
        raise ProgramError(f"--out {args.out}: cannot write {path.name} ({e.strerror or e})") from None
    print(df.describe().loc[["mean", "std"]].to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {len(df)} draws to {path}")


def _describe(args) -> None:
    import numpy as np

    from netsor import GaussianLaw, ProgramError

    layer = _layer(args)
    positions = _positions(layer, args.output)
    law = layer.law()
    if not layer.infinite_heads:
        print(law.describe([layer.outputs[i] for i in positions], latex=args.latex))
        return
    if args.latex:
        raise ProgramError("--latex: the infinite-head (--heads inf) law is a plain Gaussian with no LaTeX form")
    if len(positions) < len(layer.outputs):
        law = GaussianLaw([law.variables[i] for i in positions], law.mean[positions],
                          law.cov[np.ix_(positions, positions)], description=law.description)
    print(law.describe())


def main(argv=None) -> int:
    """Run the command line on `argv` (default sys.argv[1:]); returns the exit code."""
    command = None
    try:
        import warnings

        from netsor import ProgramError  # numpy, numba: a Ctrl-C while they load is caught below

        def one_line(message, category, *_):  # a warning is one line too, without the source line
            print(f"netsor-limits: warning: {str(message).strip().splitlines()[0]}", file=sys.stderr)

        try:
            with warnings.catch_warnings():
                warnings.showwarning = one_line
                args = parser().parse_args(argv)
                command = args.command
                if command is None:
                    raise _UsageError("netsor-limits: error: choose a command: kl, sample or describe (see --help)")
                {"kl": _kl, "sample": _sample, "describe": _describe}[command](args)
        except (_UsageError, ProgramError, MemoryError) as e:
            if isinstance(e, MemoryError):  # a size the machine cannot hold is bad input too, not a crash
                message = f"netsor-limits: error: out of memory ({e or 'MemoryError'}); ask for less (--size, --width)"
            else:
                message = str(e) if isinstance(e, _UsageError) else f"netsor-limits: error: {e}"
            print(message.splitlines()[0] if message else "netsor-limits: error", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        kept = " (finished tasks are kept in --out)" if command == "kl" else ""
        print(INTERRUPTED + kept, file=sys.stderr)
        return 130
    return 0


def _on_sigint(signum, frame):
    """The first Ctrl-C interrupts (main prints one line, cleans up, exits 130); a second one leaves at once."""
    signal.signal(signal.SIGINT, _on_second_sigint)
    raise KeyboardInterrupt


def _on_second_sigint(signum, frame):
    os.write(2, f"{INTERRUPTED} again: leaving without clean-up\n".encode())
    os._exit(130)


def run() -> None:
    """Console-script entry point."""
    code = 130
    try:
        # our handler: a Ctrl-C during main's own clean-up or message would otherwise escape as a traceback; a SIGINT
        # the caller ignores (nohup, a background job) stays ignored
        ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if ours:
            signal.signal(signal.SIGINT, _on_sigint)
        code = main()
        if ours:  # exiting now with main's code: a late Ctrl-C must not turn it into a traceback or a signal death
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # one that landed outside main's guard (before it, or as it returned)
        print(INTERRUPTED, file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":  # python -m limits.cli, like python -m limits
    run()
