"""What an operator's template may cost. Jinja2's sandbox keeps a template from reaching outside it,
not from taking all memory or CPU: ``'x'.ljust(10**8)``, ``'%200000000s'|format(x)`` or two nested
``range(99999)`` loops are all allowed by it. ``BoundedSandbox`` adds two kinds of bound.

Per operation: nothing a template builds in one step (a string, a list, a number, an output) is more
than ``MAX_BUILT_LENGTH`` characters or items, counted deeply (a list of 100 strings of 100 characters
is 10,100), and nothing that large is handed to a filter, a test, a call, a comparison or ``{{ }}``.
Widths and counts that grow a string (``ljust``, ``center``, ``zfill``, ``expandtabs``, ``replace``,
``join``, ``translate``, ``%`` and ``str.format`` widths, the ``center``, ``indent``, ``wordwrap``,
``format``, ``batch``, ``slice``, ``sum`` and ``tojson`` filters) are checked before the work is done,
so a refusal costs nothing. Numbers stay below ``MAX_INT_BITS`` bits. Jinja2's ``lipsum`` global
(lorem ipsum of any length) is removed.

Per render: ``Template.render`` gives the render a budget of ``MAX_RENDER_STEPS`` steps, shared by
everything the render does, includes and macros too: a loop round (plus the text the loop's body
writes), a call, a filter, an item of a ``range``, a character built, printed or compared. Nested
loops therefore count together. The budget is kept in a context variable, so each thread (each
render) has its own.

A refusal is an ``OverflowError`` with a one-line message, as the sandbox's own ``range`` bound is;
callers already turn it into "template … refused: OverflowError: …". Filters and tests added to the
environment after it is built, and renders that do not go through ``render`` (``generate``,
``stream``), get the per-operation bounds only.
"""

from __future__ import annotations

import functools
import re
import types
from collections import abc, deque
from contextvars import ContextVar
from decimal import Decimal
from itertools import islice
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.environment import Template
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter, safe_range
from jinja2.utils import Namespace, pass_eval_context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

MAX_BUILT_LENGTH = 10_000  # characters or items one operation may build (a WeCom text is at most 4000 bytes)
MAX_POWER_EXPONENT = 64
MAX_INT_BITS = 4096  # about 1,200 digits
MAX_RENDER_STEPS = 100_000  # a normal message takes a few hundred
MAX_JSON_INDENT = 8

_SEQUENCES = (str, bytes, bytearray, list, tuple)
_CONTAINERS = (list, tuple, set, frozenset, deque, abc.KeysView, abc.ValuesView, abc.ItemsView)


# ---------------------------------------------------------------- sizes


def size_of(value: Any, limit: int = MAX_BUILT_LENGTH) -> int:
    """Characters and items in ``value``, nested ones included and each reference counted again (what
    printing, comparing or hashing it walks). Stops past ``limit``, so it costs at most that much."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            total += item.bit_length() // 3  # at least the decimal digits beyond the first few
        elif isinstance(item, Decimal):
            total += len(str(item)) + (abs(item.adjusted()) if item.is_finite() else 0)
        elif isinstance(item, dict):
            total += 2 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            total += len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, Namespace):
            attrs = getattr(item, "_Namespace__attrs", None)  # what its repr prints
            if isinstance(attrs, dict):
                stack.append(attrs)
    return total


def sizes(values: abc.Iterable[Any], limit: int = MAX_BUILT_LENGTH) -> int:
    total = 0
    for value in values:
        total += size_of(value, limit - total)
        if total > limit:
            break
    return total


def depth_of(value: Any, limit: int = MAX_BUILT_LENGTH) -> int:
    """How deeply lists and dicts nest in ``value`` (walking at most ``limit`` items)."""
    deepest, stack, seen = 0, [(value, 0)], 0
    while stack and seen <= limit:
        item, depth = stack.pop()
        seen += 1
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, _CONTAINERS):
            stack.extend((v, depth + 1) for v in item)
    return deepest


# ---------------------------------------------------------------- the render's budget


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_RENDER_STEPS


_BUDGET: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def charge(steps: int) -> None:
    """Spend ``steps`` of the current render's budget (nothing outside a render: compiling, constant folding)."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.left -= steps
        if budget.left < 0:
            raise OverflowError(f"the template takes more than {MAX_RENDER_STEPS} steps "
                                "(loop rounds, calls, characters built)")


def check(size: int, what: str, verb: str = "makes") -> int:
    if size > MAX_BUILT_LENGTH:
        raise OverflowError(f"{what} {verb} more than {MAX_BUILT_LENGTH} characters or items")
    return size


def bound(size: int, what: str, verb: str = "makes") -> None:
    charge(check(size, what, verb))


def _items(iterable: Any, what: str) -> list[Any]:
    """An iterable as a list of at most MAX_BUILT_LENGTH items, so that its size can be known before use."""
    items = list(islice(iter(iterable), MAX_BUILT_LENGTH + 1))
    check(len(items), what, "is given")
    return items


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _width(value: Any) -> int:
    """A width or count as a template passes it: a number, or a string as ``indent`` takes it."""
    if isinstance(value, str | bytes):
        return len(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# ---------------------------------------------------------------- string formatting

_PERCENT_FIELD = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.S)


def percent_size(fmt: str | bytes, values: Any) -> int:
    """An upper bound on the length of ``fmt % values``, from the fields' widths, precisions and values."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    positional = list(values) if isinstance(values, tuple) else [values]
    mapping = values if isinstance(values, abc.Mapping) else None
    made, used = len(text), 0

    def take() -> Any:
        nonlocal used
        used += 1
        return positional[used - 1] if used <= len(positional) else None

    for match in _PERCENT_FIELD.finditer(text):
        key, width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        numbers = []
        for part in (width, precision):
            if part and len(part) > 8:  # a width of nine digits or more
                return MAX_BUILT_LENGTH + 1
            numbers.append(abs(_width(take())) if part == "*" else int(part or 0))
        value = mapping.get(key) if key is not None and mapping is not None else take()
        made += sum(numbers) + size_of(value, MAX_BUILT_LENGTH - made)
        if made > MAX_BUILT_LENGTH:
            break
    return made


class _BoundedFormatting:
    """str.format and format_map: each field's width and precision and value count against the bound."""

    _made = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._made = len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        numbers = re.findall(r"\d+", format_spec)
        self._made += sum(int(n) if len(n) < 9 else MAX_BUILT_LENGTH + 1 for n in numbers)
        self._made += size_of(value, MAX_BUILT_LENGTH)
        check(self._made, "str.format")
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _BoundedFormatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


# ---------------------------------------------------------------- str methods with a size argument


def _grown_to_width(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return max(len(s), _width(_arg(args, kwargs, 0, "width", 0)))


def _expanded_tabs(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    tab = b"\t" if isinstance(s, bytes | bytearray) else "\t"
    return len(s) + s.count(tab) * max(_width(_arg(args, kwargs, 0, "tabsize", 8)), 0)


def _replaced(s: Any, old: Any, new: Any, count: Any) -> int:
    if not isinstance(old, str | bytes | bytearray) or not isinstance(new, str | bytes | bytearray):
        return len(s)
    times = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(s) + times * max(len(new) - len(old), 0)


def _translated(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    table = _arg(args, kwargs, 0, "table")
    if isinstance(table, abc.Mapping):
        longest = max((size_of(v) for v in table.values()), default=1)
        return len(s) * max(longest, 1)
    return len(s)


_STR_METHODS = {
    "ljust": _grown_to_width, "rjust": _grown_to_width, "center": _grown_to_width, "zfill": _grown_to_width,
    "expandtabs": _expanded_tabs, "translate": _translated,
    "replace": lambda s, a, k: _replaced(s, _arg(a, k, 0, "old"), _arg(a, k, 1, "new"), _arg(a, k, 2, "count")),
}


def _checked_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse, before it runs, a call whose arguments or result would be too large; returns the arguments
    (an iterable to join is taken as a list first, so that its size is known)."""
    name = getattr(obj, "__name__", type(obj).__name__)
    given = [v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars", "caller")]
    bound(sizes([*args, *given]), f"{name}()", "is given")
    receiver = getattr(obj, "__self__", None)
    if isinstance(receiver, str | bytes | bytearray):
        if name == "join" and args:
            items = _items(args[0], "join()")
            check(sizes(items) + len(receiver) * max(len(items) - 1, 0), "join()")
            return (items, *args[1:])
        estimate = _STR_METHODS.get(name)
        if estimate is not None:
            check(estimate(receiver, args, kwargs), f"{name}()")
    elif isinstance(receiver, int) and name == "to_bytes":
        check(_width(_arg(args, kwargs, 0, "length", 1)), "to_bytes()")
    elif name == "strftime" and args and isinstance(args[0], str):
        check(sum(int(n) if len(n) < 9 else MAX_BUILT_LENGTH + 1 for n in re.findall(r"\d+", args[0])),
              "strftime()")
    return args


# ---------------------------------------------------------------- filters and tests


def _filter_center(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    check(max(size_of(value), _width(_arg(args, kwargs, 0, "width", 80))), "the center filter")
    return value


def _filter_indent(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    text = str(value)
    check(len(text) + (text.count("\n") + 1) * _width(_arg(args, kwargs, 0, "width", 4)), "the indent filter")
    return value


def _filter_wordwrap(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    text = str(value)
    width = max(_width(_arg(args, kwargs, 0, "width", 79)), 1)
    wrapstring = _arg(args, kwargs, 2, "wrapstring") or "\n"
    lines = len(text) // width + text.count("\n") + 1
    check(len(text) + lines * len(str(wrapstring)), "the wordwrap filter")
    return value


def _filter_format(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    check(percent_size(str(value), kwargs or args), "the format filter")
    return value


def _filter_replace(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    new = _arg(args, kwargs, 1, "new")
    check(_replaced(str(value), str(_arg(args, kwargs, 0, "old")), "" if new is None else str(new),
                    _arg(args, kwargs, 2, "count")), "the replace filter")
    return value


def _filter_join(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    items = _items(value, "the join filter")
    separator = str(_arg(args, kwargs, 0, "d", ""))
    check(sizes(items) + len(separator) * max(len(items) - 1, 0), "the join filter")
    return items


def _filter_sum(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    start = _arg(args, kwargs, 1, "start", 0)
    if not isinstance(start, _SEQUENCES):
        return value
    items = _items(value, "the sum filter")
    made = check(size_of(start) + sizes(items), "the sum filter")
    charge(made * len(items))  # each + copies what came before
    return items


def _filter_count(name: str, param: str) -> Any:
    """batch and slice: as many items (or lists) as their count."""
    def checked(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        check(_width(_arg(args, kwargs, 0, param, 0)), f"the {name} filter")
        return value
    return checked


def _filter_tojson(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    indent = _width(_arg(args, kwargs, 0, "indent", 0))
    if indent > MAX_JSON_INDENT:
        raise OverflowError(f"the tojson filter indents at most {MAX_JSON_INDENT}")
    check(size_of(value) * (1 + indent * depth_of(value)), "the tojson filter")
    return value


def _filter_pprint(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    check(size_of(value) * (1 + depth_of(value)), "the pprint filter")
    return value


_FILTER_CHECKS = {
    "center": _filter_center, "indent": _filter_indent, "wordwrap": _filter_wordwrap, "format": _filter_format,
    "replace": _filter_replace, "join": _filter_join, "sum": _filter_sum, "batch": _filter_count("batch", "linecount"),
    "slice": _filter_count("slice", "slices"), "tojson": _filter_tojson, "pprint": _filter_pprint,
}


def _bounded(kind: str, name: str, func: Any) -> Any:
    """A filter or test that refuses too large a value or arguments, and whose result counts as built."""
    injected = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # the context it is passed first
    what = f"the {name} {kind}"
    checked = _FILTER_CHECKS.get(name) if kind == "filter" else None

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja2 still passes the context
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if len(args) > injected:
            value, rest = args[injected], args[injected + 1:]
            charge(1)
            bound(sizes([value, *rest, *kwargs.values()]), what, "is given")
            if checked is not None:
                args = (*args[:injected], checked(value, rest, kwargs), *rest)
        result = func(*args, **kwargs)
        bound(size_of(result), what)
        return result

    return bounded


# ---------------------------------------------------------------- what the compiled template calls


def _iterate(iterable: Any, written: int) -> abc.Iterator[Any]:
    """A for loop's iterable: each round costs a step plus the text its body writes."""
    per_round = 1 + written
    for item in iterable:
        charge(per_round)
        yield item


@pass_eval_context
def _concat(eval_ctx: Any, *values: Any) -> str:
    """``a ~ b``."""
    bound(sizes(values), "~")
    return markup_join(values) if eval_ctx.autoescape else str_join(values)


def _operand(value: Any) -> Any:
    """A value compared (``==``, ``in``, …) or used as a dict key: comparing or hashing walks it."""
    bound(size_of(value), "a comparison", "reads")
    return value


class _Bounder(NodeTransformer):
    """Routes what the compiled code would do inline (loops, ``~``, comparisons, dict keys) through the bounds."""

    def __init__(self, environment: Any) -> None:
        self.environment = environment

    def _call(self, name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
        call = nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), args, [], None, None, lineno=lineno)
        call.set_environment(self.environment)
        return call

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        written = sum(len(data.data) for part in node.body for data in part.find_all(nodes.TemplateData))
        node.iter = self._call("bounded_iterate", [node.iter, nodes.Const(written, lineno=node.lineno)], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return self._call("bounded_concat", list(node.nodes), node.lineno)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Compare:
        self.generic_visit(node)
        node.expr = self._call("bounded_operand", [node.expr], node.lineno)
        for operand in node.ops:
            operand.expr = self._call("bounded_operand", [operand.expr], node.lineno)
        return node

    def visit_Pair(self, node: nodes.Pair) -> nodes.Pair:
        self.generic_visit(node)
        node.key = self._call("bounded_operand", [node.key], node.lineno)
        return node


class _BoundedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Any = None) -> None:
        _Bounder(self.environment).visit(node)
        super().visit_Template(node, frame)


class BoundedTemplate(Template):
    def render(self, *args: Any, **kwargs: Any) -> str:
        """Render with a budget of MAX_RENDER_STEPS (or within the budget of the render this one is part of)."""
        if _BUDGET.get() is not None:
            return super().render(*args, **kwargs)
        token = _BUDGET.set(_Budget())
        try:
            return super().render(*args, **kwargs)
        finally:
            _BUDGET.reset(token)


def _internal(func: Any) -> Any:
    func.bounds_internal = True
    return staticmethod(func)


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with bounds on what a template may cost (see the module's docstring)."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    code_generator_class = _BoundedCodeGenerator
    template_class = BoundedTemplate

    bounded_iterate = _internal(_iterate)
    bounded_concat = _internal(_concat)
    bounded_operand = _internal(_operand)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finalize = self._printed
        self.globals["range"] = self._range
        self.globals.pop("lipsum", None)  # lorem ipsum of any length: nothing a customer reads
        self.filters = {name: _bounded("filter", name, f) for name, f in self.filters.items()}
        self.tests = {name: _bounded("test", name, f) for name, f in self.tests.items()}

    @staticmethod
    def _printed(value: Any) -> Any:
        bound(size_of(value), "an output {{ … }}")
        return value

    @staticmethod
    def _range(*args: int) -> range:
        numbers = safe_range(*args)
        charge(len(numbers))
        return numbers

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        both_ints = isinstance(left, int) and isinstance(right, int)
        if operator_name == "**":
            if isinstance(right, int) and abs(right) > MAX_POWER_EXPONENT:
                raise OverflowError(f"exponent {right} is larger than the sandbox allows ({MAX_POWER_EXPONENT})")
            if both_ints and right > 0 and left.bit_length() * right > MAX_INT_BITS:
                raise OverflowError(f"** makes a number of more than {MAX_INT_BITS} bits")
        elif operator_name == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, _SEQUENCES) and isinstance(times, int) and times > 0:
                    check(size_of(seq) * times, "repeating")
            if both_ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise OverflowError(f"* makes a number of more than {MAX_INT_BITS} bits")
        elif operator_name == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            check(sizes([left, right]), "+")
        elif operator_name == "%" and isinstance(left, str | bytes):
            check(percent_size(left, right), "% formatting")
        result = self.binop_table[operator_name](left, right)
        charge(1)
        bound(size_of(result), operator_name)
        return result

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(argument, tuple):
            bound(size_of(argument), "a subscript", "reads")
        value = super().getitem(obj, argument)
        if isinstance(argument, slice) and isinstance(value, abc.Sized):
            charge(len(value))
        return value

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja2's own
        if getattr(__obj, "bounds_internal", False):
            return __context.call(__obj, *args, **kwargs)
        charge(1)
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level is a loop too
            args = (_iterate(args[0], 0), *args[1:])
        else:
            args = _checked_call(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        name = f"{getattr(__obj, '__name__', type(__obj).__name__)}()"
        bound(size_of(result), name)
        receiver = getattr(__obj, "__self__", None)
        if isinstance(receiver, list | dict | set | bytearray | deque):  # append, extend, update …
            check(len(receiver), name)
        return result

    def wrap_str_format(self, value: Any) -> Any:
        """Jinja2's own (3.1.5+), with a formatter that bounds each field's width, precision and value."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) \
                or value.__name__ not in ("format", "format_map"):
            return None
        f_self = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type = type(f_self)
        is_format_map = value.__name__ == "format_map"
        formatter = _BoundedEscapeFormatter(self, escape=f_self.escape) if isinstance(f_self, Markup) \
            else _BoundedFormatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return str_type(formatter.vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)
