"""Do a launch's calls fit its function? Checked before anything launches.

A call the function cannot take (an argument too many, one missing, a keyword
it does not know) would otherwise launch, and fail in its worker with a
``TypeError`` seconds later (or, for a spawned job, where nobody watches). Every
wrenpack-native launch (``.remote``, ``.map``, ``.starmap``, ``.spawn``,
``.spawn_map``) refuses it here, in one line. ``Executor.submit``/``map`` are
left as ``concurrent.futures`` has them: the error comes from the future.

The function's ``inspect.Signature`` is read once (``Shape``; a
``LaunchState`` keeps it), and a call is first tried against what was read
from it, without ``Signature.bind`` (microseconds cheaper: ``.remote()`` is on
the warm single-call path); only a call that test does not pass is bound, and
``bind`` decides. A function whose signature cannot be read (some builtins and
C functions) is not checked: its calls run as given.
"""
from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

from wrenpack.errors import ConfigTypeError
from wrenpack.executor.options import OPTION_NAMES

if TYPE_CHECKING:
    from wrenpack.executor.launch import LaunchState

Call = tuple[tuple[Any, ...], dict[str, Any]]

_P = inspect.Parameter
#: a message's longest signature (a default's repr may be a whole array)
_SHOWN = 120


class Shape:
    """What a function's signature says its calls may be (read once)."""

    __slots__ = ("signature", "name", "max_positional", "required_positional", "keyword_index", "required_keywords",
                 "any_keyword")

    def __init__(self, fn: Callable[..., Any], signature: inspect.Signature) -> None:
        self.signature = signature
        self.name: str = getattr(fn, "__qualname__", None) or type(fn).__name__
        positional = [p for p in signature.parameters.values() if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
        var_positional = any(p.kind is _P.VAR_POSITIONAL for p in signature.parameters.values())
        self.max_positional: float = float("inf") if var_positional else len(positional)
        #: per positional parameter up to the last one without a default: its name when a keyword may
        #: give it, None when it must come by position (a required positional-only one, or one with a default)
        last = max((i for i, p in enumerate(positional) if p.default is _P.empty), default=-1)
        self.required_positional: tuple[str | None, ...] = tuple(
            p.name if p.default is _P.empty and p.kind is _P.POSITIONAL_OR_KEYWORD else None
            for p in positional[:last + 1])
        #: a keyword's parameter: its position, or -1 for a keyword-only one
        self.keyword_index: dict[str, int] = {p.name: i for i, p in enumerate(positional)
                                              if p.kind is _P.POSITIONAL_OR_KEYWORD}
        self.keyword_index.update({p.name: -1 for p in signature.parameters.values() if p.kind is _P.KEYWORD_ONLY})
        self.required_keywords = tuple(p.name for p in signature.parameters.values()
                                       if p.kind is _P.KEYWORD_ONLY and p.default is _P.empty)
        self.any_keyword = any(p.kind is _P.VAR_KEYWORD for p in signature.parameters.values())

    def fits(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """True when ``Signature.bind(*args, **kwargs)`` surely succeeds; False means
        "ask ``bind``" (``check``), not "refused"."""
        n = len(args)
        if n > self.max_positional:
            return False
        required = self.required_positional
        if not kwargs:
            return n >= len(required) and not self.required_keywords
        index = self.keyword_index
        for name in kwargs:
            i = index.get(name)
            if i is None:
                if not self.any_keyword:
                    return False
            elif 0 <= i < n:  # (given by position too)
                return False
        for name in required[n:]:
            if name is None or name not in kwargs:
                return False
        for name in self.required_keywords:
            if name not in kwargs:
                return False
        return True

    def why_not(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Why the call does not fit (``bind``'s reason), or None when it does."""
        if self.fits(args, kwargs):
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            return str(exc)
        return None

    def shown(self) -> str:
        """``name(params)`` on one line, at most about ``_SHOWN`` characters."""
        text = " ".join(f"{self.name}{self.signature}".split())
        return text if len(text) <= _SHOWN else text[:_SHOWN - 4] + "...)"

    def takes(self) -> list[str]:
        """The keywords it takes by name."""
        return list(self.keyword_index)


#: a function whose signature cannot be read: its calls are not checked
UNREAD = object()


def shape_of(fn: Callable[..., Any], state: LaunchState | None = None) -> Shape | None:
    """``fn``'s ``Shape`` (kept in ``state`` once read), or None when its signature
    cannot be read. The function's own signature, not one ``functools.wraps``
    copied from the function it wraps: a wrapper may take what its function
    does not (a ``verbose=`` it handles itself)."""
    if state is not None:
        kept = state.shape
        if kept is not None:
            return None if kept is UNREAD else kept
    try:
        shape: Shape | None = Shape(fn, inspect.signature(fn, follow_wrapped=False))
    except Exception:  # noqa: BLE001 - (no signature: a builtin, a C function, a broken __signature__)
        shape = None
    if state is not None:
        state.shape = UNREAD if shape is None else shape
    return shape


def check_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], state: LaunchState | None,
               where: str) -> None:
    """``.remote(*args, **kwargs)``: the one call fits ``fn``, else one line, before launch."""
    kept = state.shape if state is not None else None
    if kept is not None and kept is not UNREAD and kept.fits(args, kwargs):  # (the warm path: no more than this)
        return
    check_calls(fn, [(args, kwargs)], where, state, which="the call")


def check_calls(fn: Callable[..., Any], calls: Sequence[Call], where: str, state: LaunchState | None = None, *,
                which: str = "items[{}]", verb: str = "launched",
                hint: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Every call of ``calls`` fits ``fn``; else one line naming the first that does
    not (``which``, formatted with its index), the signature, ``bind``'s reason, a
    hint, and that nothing was ``verb``. ``hint(kwargs)``: the caller's own hint."""
    shape = shape_of(fn, state)
    if shape is None:
        return
    for i, (args, kwargs) in enumerate(calls):
        reason = shape.why_not(args, kwargs)
        if reason is None:
            continue
        extra = hint(kwargs) if hint is not None else ""
        if not extra and "unexpected keyword" in reason:
            extra = _keyword_hint(shape, [k for k in kwargs if k not in shape.keyword_index])
        raise ConfigTypeError(f"{where}: {which.format(i)} does not fit {shape.shown()}: {reason}{extra}; "
                              f"nothing was {verb}")


def check_keywords(fn: Callable[..., Any], kwargs: dict[str, Any], where: str, state: LaunchState | None = None) -> None:
    """The keywords ``map``/``starmap`` pass on to every call must be ones ``fn`` takes: a
    misspelt ``chunksize`` (``chunksise=2``) would otherwise go to the function and fail
    every call in its worker. Checked once, before anything launches (even of no items)."""
    shape = shape_of(fn, state)
    if shape is None or shape.any_keyword:
        return
    takes = shape.takes()
    unknown = [name for name in kwargs if name not in shape.keyword_index]
    if not unknown:
        return
    name = shape.name
    close = difflib.get_close_matches(unknown[0], ["chunksize", *takes], n=1)
    hint = f"did you mean {close[0]}=? " if close else ""
    raise ConfigTypeError(f"{where}: {name}() takes no keyword {', '.join(repr(k) for k in unknown)} ({where[:-2]} passes "
                          f"its keywords other than chunksize to every call); {hint}{name} takes: "
                          f"{', '.join(takes) or 'no keywords'}")


def _keyword_hint(shape: Shape, unknown: list[str]) -> str:
    """For a keyword the function does not take: an option's name says where options
    go; else its close match, and what the function takes."""
    if not unknown:
        return ""
    if unknown[0] in OPTION_NAMES:
        return f" (every keyword goes to the function; options go to f.options({unknown[0]}=...))"
    close = difflib.get_close_matches(unknown[0], shape.takes(), n=1)
    meant = f"did you mean {close[0]}=? " if close else ""
    return f" ({meant}{shape.name} takes: {', '.join(shape.takes()) or 'no keywords'})"
