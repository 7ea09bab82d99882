"""Content fingerprints of programs: two programs share a fingerprint only if they define the same law.

The fingerprint hashes, node by node in program order, the node's kind, name, parents and every number at full
precision (covariances as bytes, variances, exponents and coefficients as float.hex), and each function by its
content: built-in nonlinearities by the object they are, parameterised families by their parameter, user
functions by their bytecode, constants, defaults, closure values and the plain values of the globals they read
(numbers, strings, arrays; modules by name, functions recursively). What cannot be hashed that way is refused with
a `ProgramError` naming the node, never keyed by a printed name: a cache or store keyed by it would mix laws.
"""
from __future__ import annotations

import hashlib
import numbers
import types

import numpy as np

from ..errors import ProgramError
from .nonlinearities import Nonlinearity, _Builtin, _Family
from .program import (Dot, HeadSum, Input, LinComb, MatMul, Matrix, Moment, Nonlin, Program, ScalarFn,
                      SoftmaxEntry)

_DEPTH = 8  # how deep functions calling functions are followed


def fingerprint(program: Program) -> str:
    """The sha256 content fingerprint of a program (hex), or ProgramError naming what cannot be fingerprinted."""
    if not isinstance(program, Program):
        raise ProgramError(f"fingerprint: expected a netsor Program, got {type(program).__name__}")
    digest = hashlib.sha256()
    for node in program.nodes:
        try:
            parts = [type(node).__name__, node.name, [p.index for p in node.parents()], _fields(node)]
            digest.update(repr(_canonical(parts, node, 0)).encode())
        except _Unhashable as exc:
            raise ProgramError(f"{node.name} := {node.definition()}: cannot be fingerprinted ({exc}); give its "
                               f"functions plain numeric constants, or do without a store (out_dir=None)") from None
    return digest.hexdigest()


class _Unhashable(Exception):
    pass


def _fields(node):
    if isinstance(node, Input):
        return [node.position, node.dim, node.group.cov, [m.index for g, members in node.program.input_groups
                                                           if g is node.group for m in members]]
    if isinstance(node, Matrix):
        return [node.var, list(node.shape)]
    if isinstance(node, MatMul):
        return [node.dim]
    if isinstance(node, (Nonlin, Moment)):
        return [node.phi]
    if isinstance(node, LinComb):
        return [[("scalar", c.index) if not isinstance(c, numbers.Real) else c for c in node.coeffs]]
    if isinstance(node, Dot):
        return [node.exponent]
    if isinstance(node, ScalarFn):
        return [node.fn]
    if isinstance(node, HeadSum):
        return [[a.index for a in node.group.args], [W.index for W in node.group.per_head]]
    if isinstance(node, SoftmaxEntry):
        return [node.position, [p.index for p in node.group.scores]]
    raise _Unhashable(f"no fingerprint rule for {type(node).__name__} nodes")


def _canonical(value, node, depth):
    """A repr-stable nested tuple standing for `value`'s content."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, numbers.Integral):
        return ("int", int(value))
    if isinstance(value, numbers.Real):
        return ("float", float(value).hex())
    if isinstance(value, numbers.Complex):
        return ("complex", complex(value).real.hex(), complex(value).imag.hex())
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise _Unhashable("an object array")
        content = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return ("array", value.dtype.str, value.shape, content)
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v, node, depth) for v in value)
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(k), _canonical(v, node, depth)) for k, v in value.items())))
    if isinstance(value, Nonlinearity):
        return _nonlinearity(value, node, depth)
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    return _function(value, node, depth)


def _nonlinearity(phi: Nonlinearity, node, depth):
    if isinstance(phi, _Builtin):  # the object itself: it unpickles as itself
        return ("builtin", phi.__reduce__())
    if isinstance(phi, _Family):
        return ("family", type(phi).__name__, float(phi.parameter).hex())
    return ("user", phi.arity, _function(phi.fn, node, depth))


def _function(fn, node, depth):
    if depth > _DEPTH:
        raise _Unhashable("functions nested too deep")
    if isinstance(fn, np.ufunc):
        return ("ufunc", fn.__name__)
    if isinstance(fn, type):
        return ("type", fn.__module__, fn.__qualname__)
    if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return ("builtin-function", getattr(fn, "__module__", None), fn.__qualname__)
    if isinstance(fn, types.FunctionType):
        code = fn.__code__
        closure = [cell.cell_contents for cell in fn.__closure__ or ()]
        read = {name: fn.__globals__[name] for name in _global_names(code) if name in fn.__globals__}
        return ("function", fn.__module__, fn.__qualname__, _code(code),
                _canonical(fn.__defaults__, node, depth + 1), _canonical(fn.__kwdefaults__, node, depth + 1),
                _canonical(closure, node, depth + 1), _canonical(read, node, depth + 1))
    if isinstance(fn, types.MethodType):
        return ("method", _function(fn.__func__, node, depth + 1), _canonical(fn.__self__, node, depth + 1))
    call = getattr(type(fn), "__call__", None)
    if isinstance(call, types.FunctionType) and hasattr(fn, "__dict__"):
        # a callable object (e.g. the clip of a Clip): its class's __call__ and its attributes
        return ("callable", type(fn).__module__, type(fn).__qualname__, _function(call, node, depth + 1),
                _canonical(vars(fn), node, depth + 1))
    if callable(fn) and type(fn).__module__.split(".")[0] in ("numpy", "scipy"):
        return ("library", type(fn).__module__, getattr(fn, "__name__", type(fn).__qualname__))
    raise _Unhashable(f"{type(fn).__name__} {getattr(fn, '__name__', fn)!r} has no content fingerprint")


def _code(code: types.CodeType):
    consts = tuple(_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return (code.co_code.hex(), consts, code.co_names, code.co_varnames, code.co_argcount)


def _global_names(code: types.CodeType):
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return sorted(names)
