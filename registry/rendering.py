"""Sandboxed Jinja2 rendering of prompt templates.

Templates run in an immutable sandbox (no attribute access to internals, no mutation of values),
with StrictUndefined, and no autoescaping (the output is chat text, not HTML). Variable values are
passed as data: a value containing `{{ ... }}` is printed literally, never evaluated again.
Every missing variable is found before rendering, so one error names them all.

Rendering is bounded, because a version is code its author runs inside the proxy: `range()` has a
length cap, `*`, `+`, `**` and `%` are intercepted and refused when their result would be too
large, every loop iteration, call, filter and attribute lookup counts against an operation budget
and a wall-clock deadline, every string or list built on the way is charged against a character
budget, and the output is produced piece by piece and stopped past its cap. A broken bound raises
RenderLimitExceeded (ValidationFailed `prompt_render_limit` to callers), naming the setting.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.conf import hot
from core.errors import ValidationFailed

RENDER_ERROR = "prompt_render_error"
RENDER_LIMIT = "prompt_render_limit"
VARIABLE_TYPES = ("string", "number", "boolean", "list", "object")
# Integers past this many bits are refused as results of `**` (Python would happily compute 10**10**8).
MAX_POWER_BITS = 65_536
# Everything a render builds on the way (strings, lists, filter and call results) may add up to
# this many times the output cap: enough for any template that slices and joins its variables,
# not enough to hold gigabytes in unrolled `{% set %}` statements.
PRODUCED_FACTOR = 10


class RenderLimitExceeded(Exception):
    """A render broke a bound; the message says which, naming the setting that sets it."""


class _Budget:
    """The bounds of one render (all messages of one version), read from settings at its start."""

    __slots__ = ("deadline", "max_chars", "max_operations", "max_range", "operations", "output", "produced", "time_ms")

    def __init__(self) -> None:
        self.time_ms = hot.STEWARD_RENDER_TIME_LIMIT_MS
        self.deadline = time.monotonic() + self.time_ms / 1000
        self.max_chars = hot.STEWARD_RENDER_MAX_OUTPUT_CHARS
        self.max_operations = hot.STEWARD_RENDER_MAX_OPERATIONS
        self.max_range = hot.STEWARD_RENDER_MAX_RANGE
        self.operations = 0
        self.output = 0
        self.produced = 0

    def tick(self) -> None:
        """One loop iteration, call, filter, lookup or intercepted operation."""
        self.operations += 1
        if self.operations > self.max_operations:
            raise RenderLimitExceeded(
                f"the template made more than {self.max_operations:,} loop iterations and calls "
                "(STEWARD_RENDER_MAX_OPERATIONS)"
            )
        if not self.operations & 63:
            self.time_check()

    def time_check(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(f"rendering took longer than {self.time_ms} ms (STEWARD_RENDER_TIME_LIMIT_MS)")

    def charge(self, size: int, what: str) -> None:
        """A string or list of `size` characters or items is about to be built (or just was)."""
        if size > self.max_chars:
            raise RenderLimitExceeded(
                f"{what} would be {size:,} characters or items, over the limit of {self.max_chars:,} "
                "(STEWARD_RENDER_MAX_OUTPUT_CHARS)"
            )
        self.produced += size
        if self.produced > self.max_chars * PRODUCED_FACTOR:
            raise RenderLimitExceeded(
                f"the template built more than {self.max_chars * PRODUCED_FACTOR:,} characters on the way "
                f"({PRODUCED_FACTOR} x STEWARD_RENDER_MAX_OUTPUT_CHARS)"
            )


_current = threading.local()


def _budget() -> _Budget:
    budget = getattr(_current, "budget", None)
    # A template rendered outside CompiledVersion.render (none is, today) gets bounds per operation.
    return budget if budget is not None else _Budget()


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple | dict) else None


def _charge_result(budget: _Budget, value: Any, what: str) -> Any:
    size = _sized(value)
    if size is not None and size > 64:
        budget.charge(size, what)
    return value


# `%`-specs and `{...:spec}` fields of a format string; their widths and precisions are what can
# turn a short string into a huge one ('%999999999s', '{:>999999999}').
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_NESTED_BRACE = re.compile(r"\{[^{}]*:[^{}]*\{")


def _format_check(budget: _Budget, fmt: Any, args: tuple = (), kwargs: dict | None = None) -> None:
    if not isinstance(fmt, str):
        return
    widths = [int(n) for spec in _BRACE_SPEC.findall(fmt) for n in re.findall(r"\d+", spec)]
    for width, precision in _PERCENT_SPEC.findall(fmt):
        if "*" in (width, precision):
            raise RenderLimitExceeded("a '*' width in a % format is not allowed in templates")
        widths += [int(n) for n in (width, precision) if n]
    if _NESTED_BRACE.search(fmt):  # '{:{}}': the width comes from the arguments
        widths += [v for v in (*args, *(kwargs or {}).values()) if isinstance(v, int)]
    if widths:
        budget.charge(max(widths) + len(fmt), "a formatted string")


def _replace_size(s: str, old: Any, new: Any, count: Any) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    occurrences = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    return len(s) + occurrences * max(len(new) - len(old), 0)


def _join_size(items: list, separator: Any) -> int:
    total = len(str(separator)) * max(len(items) - 1, 0)
    for item in items:
        total += len(item) if isinstance(item, str) else 24
    return total


def _width(value: Any) -> int:
    return value if isinstance(value, int) else len(value) if isinstance(value, str) else 0


def _filter_center(budget, args, kwargs):
    budget.charge(_width(args[1] if len(args) > 1 else kwargs.get("width", 80)), "center()")
    return args, kwargs


def _filter_indent(budget, args, kwargs):
    text = str(args[0])
    width = _width(args[1] if len(args) > 1 else kwargs.get("width", 4))
    budget.charge(len(text) + (text.count("\n") + 1) * width, "indent()")
    return args, kwargs


def _filter_wordwrap(budget, args, kwargs):
    text = str(args[1]) if len(args) > 1 else ""  # wordwrap takes the environment first
    wrapstring = kwargs.get("wrapstring") or (args[4] if len(args) > 4 else "\n")
    width = args[2] if len(args) > 2 else kwargs.get("width", 79)
    lines = len(text) // max(width if isinstance(width, int) else 1, 1) + text.count("\n") + 1
    budget.charge(len(text) + lines * len(str(wrapstring)), "wordwrap()")
    return args, kwargs


def _filter_replace(budget, args, kwargs):
    # replace takes the eval context first: (eval_ctx, s, old, new, count=None)
    values = list(args[1:]) + [kwargs.get(k) for k in ("old", "new", "count")][max(len(args) - 2, 0) :]
    s, old, new, count = (values + [None] * 4)[:4]
    if isinstance(s, str):
        budget.charge(_replace_size(s, old, new, count), "replace()")
    return args, kwargs


def _filter_join(budget, args, kwargs):
    # join takes the eval context first: (eval_ctx, value, d="", attribute=None); generators are
    # materialised once here so their size can be known before the join.
    items = list(args[1])
    budget.charge(len(items), "join()'s input")
    separator = args[2] if len(args) > 2 else kwargs.get("d", "")
    if kwargs.get("attribute") is None and len(args) <= 3:
        budget.charge(_join_size(items, separator), "join()")
    return (args[0], items, *args[2:]), kwargs


def _filter_format(budget, args, kwargs):
    _format_check(budget, args[0], args[1:], kwargs)
    return args, kwargs


def _filter_count_arg(name: str, position: int, keyword: str):
    def check(budget, args, kwargs):
        count = args[position] if len(args) > position else kwargs.get(keyword)
        if isinstance(count, int):
            budget.charge(count, f"{name}()")
        return args, kwargs

    return check


def _filter_tojson(budget, args, kwargs):
    indent = args[2] if len(args) > 2 else kwargs.get("indent")
    if _width(indent) > 64:
        raise RenderLimitExceeded("tojson() indent over 64 is not allowed in templates")
    return args, kwargs


_FILTER_CHECKS: dict[str, Callable] = {
    "center": _filter_center,
    "indent": _filter_indent,
    "wordwrap": _filter_wordwrap,
    "replace": _filter_replace,
    "join": _filter_join,
    "format": _filter_format,
    "batch": _filter_count_arg("batch", 1, "linecount"),
    "slice": _filter_count_arg("slice", 1, "slices"),
    "tojson": _filter_tojson,
}


def _bounded_filter(name: str, func: Callable) -> Callable:
    check = _FILTER_CHECKS.get(name)

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja still passes the context/environment
    def bounded(*args, **kwargs):
        budget = _budget()
        budget.tick()
        if check is not None:
            args, kwargs = check(budget, args, kwargs)
        return _charge_result(budget, func(*args, **kwargs), f"the {name} filter's result")

    return bounded


def _str_method_check(budget: _Budget, method: types.BuiltinMethodType, args: tuple, kwargs: dict) -> tuple:
    text, name = method.__self__, method.__name__
    if name in ("center", "ljust", "rjust", "zfill"):
        budget.charge(_width(args[0] if args else 0), f"str.{name}()")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        budget.charge(len(text) * max(_width(tabsize), 1), "str.expandtabs()")
    elif name == "replace":
        budget.charge(_replace_size(text, *[*args, None, None, None][:3]), "str.replace()")
    elif name == "join" and args:
        items = list(args[0])
        budget.charge(_join_size(items, text), "str.join()")
        args = (items, *args[1:])
    return args


class _BoundedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        # `a ~ b` goes through environment.concat (bounded) instead of jinja2.runtime.str_join.
        self.write("concat((")
        for argument in node.nodes:
            self.write("str(")
            self.visit(argument, frame)
            self.write("), ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}
        # Read by compiled templates for block buffers, macro output and `~` (see _BoundedCodeGenerator).
        self.concat = _bounded_concat

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        # Every `for` iterates through loop_iter, which counts each iteration against the budget:
        # nested loops that print nothing are bounded too.
        for loop in tree.find_all(nodes.For):
            wrapper = nodes.Call(
                nodes.EnvironmentAttribute("loop_iter", lineno=loop.lineno),
                [loop.iter],
                [],
                None,
                None,
                lineno=loop.lineno,
            )
            wrapper.set_environment(self)
            loop.iter = wrapper
        return tree

    def loop_iter(self, iterable: Any):
        budget = _budget()
        for item in iterable:
            budget.tick()
            yield item

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        sequences = str | list | tuple
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, sequences) and isinstance(times, int):
                    budget.charge(len(sequence) * max(times, 0), f"{type(sequence).__name__} * {times:,}")
        elif operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
            budget.charge(len(left) + len(right), "a concatenation")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and right * left.bit_length() > MAX_POWER_BITS:
                raise RenderLimitExceeded(f"{left} ** {right} is too large a number for a template")
        elif operator == "%" and isinstance(left, str):
            _format_check(budget, left, right if isinstance(right, tuple) else (right,))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # Jinja's signature: __self, not self
        budget = _budget()
        budget.tick()
        if type(__obj) is types.BuiltinMethodType and isinstance(__obj.__self__, str):
            args = _str_method_check(budget, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return _charge_result(budget, result, "a call's result")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja hands templates a sandboxed stand-in for str.format / format_map at lookup time.
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        fmt = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if value.__name__ == "format_map" and args and isinstance(args[0], dict) else {}
            _format_check(_budget(), fmt, args, {**mapping, **kwargs})
            return sandboxed(*args, **kwargs)

        return bounded

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().tick()
        return super().getitem(obj, argument)


def _bounded_range(*args: int) -> range:
    budget = _budget()
    numbers = range(*args)
    if len(numbers) > budget.max_range:
        raise RenderLimitExceeded(
            f"range() of {len(numbers):,} items is over the limit of {budget.max_range:,} (STEWARD_RENDER_MAX_RANGE)"
        )
    return numbers


def _bounded_concat(pieces) -> str:
    if not isinstance(pieces, list | tuple):
        pieces = list(pieces)
    budget = _budget()
    budget.tick()
    budget.charge(sum(map(len, pieces)), "a block or joined string")
    return "".join(pieces)


def _finalize(value: Any) -> Any:
    # Optional variables without a default are None; they print as nothing rather than "None".
    return "" if value is None else value


_env = _BoundedSandbox(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    finalize=_finalize,
)


def template_parse(source: str) -> jinja2.nodes.Template:
    """The AST of `source`; raises jinja2.TemplateSyntaxError."""
    return _env.parse(source)


def variables_detect(sources: list[str]) -> list[str]:
    """Names the templates read from outside (loop variables and `set` names excluded), in order of first use.

    Templates with syntax errors contribute nothing (the editor shows the syntax error separately).
    """
    found: dict[str, int] = {}
    for position, source in enumerate(sources):
        try:
            names = meta.find_undeclared_variables(template_parse(source))
        except jinja2.TemplateSyntaxError:
            continue
        for name in names:
            match = re.search(r"\b" + re.escape(name) + r"\b", source)
            order = position * 10_000_000 + (match.start() if match else 0)
            found[name] = min(order, found.get(name, order))
    return sorted(found, key=lambda n: (found[n], n))


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, dict)
    return True


def value_type_ok(kind: str, value: Any) -> bool:
    return _type_ok(kind, value)


@dataclass(frozen=True)
class CompiledVersion:
    """A version's templates compiled once; rendering per call only binds variables."""

    messages: tuple[tuple[str, jinja2.Template], ...]
    declared: tuple[dict, ...]
    used: frozenset[str]
    # Has loops or macros: can spend its whole time limit, so the proxy renders it on a thread.
    loops: bool = False

    def render(self, variables: dict | None) -> list[dict]:
        """The rendered messages; raises ValidationFailed (prompt_render_error, or prompt_render_limit
        when a bound broke: STEWARD_RENDER_* settings)."""
        values = self._bind(variables or {})
        try:
            return self._render_bounded(values, _Budget())
        except _MessageFailed as failed:
            raise failed.error from failed.error.__cause__

    def _render_bounded(self, values: dict, budget: _Budget, *, on_error: Callable | None = None) -> list[dict]:
        rendered = []
        outer = getattr(_current, "budget", None)
        _current.budget = budget
        try:
            for index, (role, template) in enumerate(self.messages):
                try:
                    content = _generate(template, values, budget)
                except Exception as exc:
                    error = _render_error(index, exc)
                    if on_error is None or on_error(index, error):
                        raise _MessageFailed(error) from None
                    content = ""
                rendered.append({"role": role, "content": content})
        finally:
            _current.budget = outer
        return rendered

    def _bind(self, given: dict) -> dict:
        if not isinstance(given, dict):
            raise ValidationFailed(
                "Variables must be an object of names to values.", code=RENDER_ERROR, param="prompt.variables"
            )
        values: dict[str, Any] = {}
        missing: list[str] = []
        wrong: list[str] = []
        declared_names = set()
        for spec in self.declared:
            name = spec["name"]
            declared_names.add(name)
            if name in given and given[name] is not None:
                value = given[name]
                if not _type_ok(spec.get("type", "string"), value):
                    wrong.append(f"{name} must be a {spec.get('type', 'string')}, got {_json_type(value)}")
                    continue
                values[name] = value
            elif "default" in spec and spec["default"] is not None:
                values[name] = spec["default"]
            elif spec.get("required", True):
                missing.append(name)
            else:
                values[name] = None
        for name in sorted(self.used - declared_names):
            if name in given:
                values[name] = given[name]
            else:
                missing.append(name)
        for name, value in given.items():
            if name not in values and name not in declared_names and isinstance(name, str):
                values[name] = value
        if missing:
            raise ValidationFailed(
                "Missing variables: " + ", ".join(missing) + ".",
                code=RENDER_ERROR,
                param="prompt.variables",
                extra={"missing": missing},
            )
        if wrong:
            raise ValidationFailed(
                "Wrong variable types: " + "; ".join(wrong) + ".",
                code=RENDER_ERROR,
                param="prompt.variables",
                extra={"invalid": wrong},
            )
        return values


def _json_type(value: Any) -> str:
    for kind in ("boolean", "number", "string", "list", "object"):
        if _type_ok(kind, value):
            return kind
    return "null" if value is None else type(value).__name__


class _MessageFailed(Exception):
    def __init__(self, error: ValidationFailed):
        super().__init__(error.message)
        self.error = error


def _generate(template: jinja2.Template, values: dict, budget: _Budget) -> str:
    # The output piece by piece (what Template.generate() yields, without its extra generator
    # layer: about 1 µs per typical prompt), stopped at its cap instead of being joined whole first.
    pieces: list[str] = []
    append = pieces.append
    room = budget.max_chars - budget.output
    for piece in template.root_render_func(template.new_context(values)):
        room -= len(piece)
        if room < 0:
            raise RenderLimitExceeded(
                f"the rendered prompt is longer than {budget.max_chars:,} characters (STEWARD_RENDER_MAX_OUTPUT_CHARS)"
            )
        append(piece)
    budget.output = budget.max_chars - room
    budget.time_check()
    return "".join(pieces)


def _render_error(index: int, exc: BaseException) -> ValidationFailed:
    where = f"Rendering message {index + 1}"
    if isinstance(exc, RenderLimitExceeded):
        error = ValidationFailed(
            f"{where} broke a limit: {exc}.", code=RENDER_LIMIT, param=f"messages[{index}].content"
        )
    elif isinstance(exc, MemoryError | RecursionError):
        error = ValidationFailed(
            f"{where} broke a limit: it ran out of {'memory' if isinstance(exc, MemoryError) else 'stack'}.",
            code=RENDER_LIMIT,
            param=f"messages[{index}].content",
        )
    elif isinstance(exc, jinja2.UndefinedError):
        error = ValidationFailed(f"{where} failed: {exc.message}", code=RENDER_ERROR, param="prompt.variables")
    elif isinstance(exc, jinja2.exceptions.SecurityError):
        error = ValidationFailed(
            f"{where} was refused by the sandbox: {exc}", code=RENDER_ERROR, param="prompt.variables"
        )
    elif isinstance(exc, TypeError | ValueError | ArithmeticError | jinja2.TemplateError):
        error = ValidationFailed(f"{where} failed: {exc}", code=RENDER_ERROR, param="prompt.variables")
    else:
        raise exc
    error.__cause__ = exc
    return error


def _has_loops(ast: nodes.Template) -> bool:
    return any(True for _ in ast.find_all((nodes.For, nodes.Macro, nodes.CallBlock)))


def version_compile(*, messages: list[dict], variables: list[dict]) -> CompiledVersion:
    compiled = []
    used: set[str] = set()
    loops = False
    for message in messages:
        source = message["content"]
        ast = template_parse(source)
        used |= meta.find_undeclared_variables(ast)
        loops = loops or _has_loops(ast)
        compiled.append((message["role"], _env.from_string(source)))
    return CompiledVersion(messages=tuple(compiled), declared=tuple(variables), used=frozenset(used), loops=loops)


_EXAMPLES = {"string": "example", "number": 1, "boolean": True, "list": [], "object": {}}


def version_render_check(*, messages: list[dict], variables: list[dict]) -> None:
    """Refuse (ValidationFailed prompt_render_limit, naming the message) a version whose test render
    breaks a bound. Rendered with each declared variable's default, or an example of its type, and
    "example" for variables the templates use without declaring. Other render errors are left to
    request time: the examples may simply not suit the template."""
    compiled = version_compile(messages=messages, variables=variables)
    values: dict[str, Any] = {name: "example" for name in compiled.used}
    for spec in variables:
        default = spec.get("default")
        values[spec["name"]] = default if default is not None else _EXAMPLES.get(spec.get("type", "string"), "")

    def is_limit(index: int, error: ValidationFailed) -> bool:
        return error.code == RENDER_LIMIT

    try:
        compiled._render_bounded(values, _Budget(), on_error=is_limit)
    except _MessageFailed as failed:
        raise failed.error from None


# Renders of versions with loops or macros, off the event loop. Two threads: a flood of slow
# templates queues here (each ends within STEWARD_RENDER_TIME_LIMIT_MS) rather than taking the
# threads database reads use.
_render_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt-render")


async def arender(func: Callable, *args: Any) -> Any:
    """Run `func(*args)` (a render) on the render threads."""
    return await asyncio.get_running_loop().run_in_executor(_render_executor, func, *args)


class _CompiledCache:
    """Compiled templates per immutable version; keyed by (id, content hash) so a reused id cannot alias."""

    def __init__(self, max_entries: int = 2_000):
        self._data: OrderedDict[tuple[int, str], CompiledVersion] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get_or_compile(self, *, version_id: int, content_hash: str, messages: list, variables: list) -> CompiledVersion:
        key = (version_id, content_hash)
        found = self._data.get(key)
        if found is not None:
            return found
        compiled = version_compile(messages=messages, variables=variables)
        with self._lock:
            self._data[key] = compiled
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return compiled


compiled_cache = _CompiledCache()
