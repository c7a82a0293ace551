"""Jinja2 in a sandbox: values that contain ``{{``, ``when:`` expressions and template files.

Undefined names are errors. Only strings written in the repo's profiles, apps and templates are
ever treated as templates; a value that comes from data or facts is inserted as text and never
rendered again, so ``{{`` in a fact stays ``{{``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

import jinja2
import jinja2.filters
import yaml
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

from reconciler.errors import Location, ModelError
from reconciler.model.yamlload import INT_LIMIT, MAX_DEPTH, MAX_INT_DIGITS, LocList, LocMap

MAX_OUTPUT = 4 * 1024 * 1024  # bytes a single render may produce
# What a template or expression may raise for what it was given: each becomes a ModelError.
# RecursionError: Jinja2's parser recurses once per level of nesting in the source.
_ERRORS = (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, RecursionError)


# Any number handed to a filter or method larger than this is refused: widths and counts that
# large would build a string or list past MAX_OUTPUT before the output bound could see it.
MAX_ARGUMENT = MAX_OUTPUT
_WIDE_FORMAT = re.compile(r"\d{8,}")  # a format width or precision of 8 digits or more


# Splitting text makes one object per piece (some 60 bytes each): a text that would split into
# more pieces than this is refused (str.split, wordwrap). Lists are bounded alike: a filter
# makes at most this many items, and takes at most this many to make one object of each.
MAX_PIECES = MAX_OUTPUT // 16
MAX_ITEMS = MAX_PIECES


def _size(value: Any, limit: int = MAX_OUTPUT) -> int:
    """About how many characters ``value`` takes written out (as text, JSON or YAML): its
    strings, counted at every place they appear, and a few per item. Counting stops past
    ``limit``, so a list that holds one big string a million times costs little to measure."""
    total = 0
    iters: list[Iterator[Any]] = [iter((value,))]
    while iters:
        item = next(iters[-1], _END)
        if item is _END:
            iters.pop()
            continue
        if isinstance(item, str | bytes | bytearray):
            total += len(item) + 2
        elif isinstance(item, Mapping):
            total += 2
            iters.append(iter(item.items()))
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2
            iters.append(iter(item))
        else:
            total += 8
        if total > limit:
            break
    return total


_END = object()


def _check_size(value: Any, limit: int = MAX_OUTPUT) -> None:
    if _size(value, limit) > limit:
        raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")


def _text(value: Any) -> str:
    """``str(value)``, refused before it is built when it would pass the output bound."""
    if isinstance(value, str):
        return value
    _check_size(value)
    return str(value)


def _join_bounded(items: Iterable[Any], separator: str = "", strict: bool = False) -> str:
    """Join items as text, counting as it goes: never more than the bound is held."""
    parts: list[str] = []
    total = 0
    for item in items:
        if strict and not isinstance(item, str):
            raise TypeError(f"sequence item {len(parts)}: expected str instance")
        text = _text(item)
        total += len(text) + (len(separator) if parts else 0)
        if total > MAX_OUTPUT:
            raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
        parts.append(text)
    return separator.join(parts)


def _check_pieces(count: int) -> None:
    if count > MAX_PIECES:
        raise ValueError(f"the text would split into more than {MAX_PIECES} pieces")


def _words(text: str) -> int:
    return sum(1 for _ in re.finditer(r"\S+", text))


def _format_size(template: str, values: Iterable[Any], braces: bool) -> None:
    """A format string's result is at most its own length and, per conversion, the largest
    value: refused when that passes the bound (``"%s%s%s" % (big, big, big)``)."""
    if _WIDE_FORMAT.search(template):
        raise ValueError("a format width of more than 7 digits")
    conversions = template.count("{") if braces else template.count("%")
    largest = max((_size(v) for v in values), default=0)
    if len(template) + conversions * largest > MAX_OUTPUT:
        raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")


def _format_values(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[Any]:
    return [*args, *kwargs.values()]


def _replace_size(text: str, old: str, new: str, count: int = -1) -> None:
    found = len(text) + 1 if old == "" else text.count(old)
    if count is not None and count >= 0:
        found = min(found, count)
    if len(text) + found * (len(new) - len(old)) > MAX_OUTPUT:
        raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")


def _str_method(owner: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a call of a ``str`` method whose result would pass the bound, before it runs."""
    if name == "replace" and len(args) >= 2:
        if isinstance(args[0], str) and isinstance(args[1], str):
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            _replace_size(owner, args[0], args[1], count if isinstance(count, int) else -1)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and len(owner) + owner.count("\t") * size > MAX_OUTPUT:
            raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
    elif name == "translate" and args and isinstance(args[0], Mapping):
        widest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        if len(owner) * widest > MAX_OUTPUT:
            raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
    elif name in ("split", "rsplit", "splitlines"):
        separator = args[0] if args else kwargs.get("sep")
        if isinstance(separator, str) and separator:
            _check_pieces(owner.count(separator) + 1)
        else:
            _check_pieces(_words(owner) if name != "splitlines" else owner.count("\n") + 1)


# Filters that build their result in one step, replaced by versions that know its size first.


@jinja2.pass_environment
def _join(env: jinja2.Environment, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = map(jinja2.filters.make_attrgetter(env, attribute), value)
    return _join_bounded(value, _text(d))


def _replace(s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = _text(s), _text(old), _text(new)
    _replace_size(text, old, new, -1 if count is None else count)
    return text.replace(old, new, -1 if count is None else count)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = _text(s)
    step = len(width) if isinstance(width, str) else width
    if len(text) + (text.count("\n") + 1) * step > MAX_OUTPUT:
        raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
    return str(jinja2.filters.do_indent(text, width, first, blank))


@jinja2.pass_environment
def _wordwrap(
    env: jinja2.Environment,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = _text(s)
    words = _words(text)
    _check_pieces(2 * words + (len(text) // max(width, 1) if break_long_words else 0))
    lines = words + text.count("\n") + 1 + (len(text) // max(width, 1) if break_long_words else 0)
    glue = len(env.newline_sequence if wrapstring is None else wrapstring)
    if len(text) + lines * glue > MAX_OUTPUT:
        raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
    return jinja2.filters.do_wordwrap(
        env, text, width, break_long_words, wrapstring, break_on_hyphens
    )


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    text = _text(value)
    _format_size(text, _format_values(args, kwargs), braces=False)
    return jinja2.filters.do_format(text, *args, **kwargs)


def _wordcount(s: Any) -> int:
    return _words(_text(s))


@jinja2.pass_environment
def _sum(
    env: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    items = list(iterable)
    if attribute is not None:
        items = list(map(jinja2.filters.make_attrgetter(env, attribute), items))
    sized = [i for i in (start, *items) if isinstance(i, list | tuple)]
    _check_items(sum(len(i) for i in sized))
    return sum(items, start)


def _check_items(count: int) -> None:
    if count > MAX_ITEMS:
        raise ValueError(f"more than {MAX_ITEMS} items")


def _counting(items: Iterator[Any]) -> Iterator[Any]:
    """A filter's lazy result (map, select, batch...): refused past MAX_ITEMS as it is drawn."""
    for count, item in enumerate(items):
        _check_items(count + 1)
        yield item


def _itemwise(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that makes an object per item of its value: at most MAX_ITEMS of them."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        value = args[1] if getattr(function, "jinja_pass_arg", None) else args[0]
        if isinstance(value, Sized):
            _check_items(len(value))
        return function(*args, **kwargs)

    return call


def _counted(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose count argument (rows, columns) makes that many lists: at most MAX_RANGE."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_RANGE:
                raise ValueError(f"the number {value} is too large here (at most {MAX_RANGE})")
        return function(*args, **kwargs)

    return call


def _measured(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that writes its whole value out (tojson, to_yaml, string, pprint, ...): the
    value is measured first."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        value = args[1] if getattr(function, "jinja_pass_arg", None) else args[0]
        _check_size(value)
        return function(*args, **kwargs)

    return call


_BOUNDED_FILTERS: dict[str, Callable[..., Any]] = {
    "join": _join,
    "replace": _replace,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "format": _format,
    "wordcount": _wordcount,
    "sum": _sum,
}
_COUNTED_FILTERS = ("batch", "slice")
_ITEMWISE_FILTERS = (
    "list", "batch", "slice", "map", "select", "reject", "selectattr", "rejectattr", "groupby",
    "unique", "sort", "dictsort", "items",
)  # fmt: skip
_MEASURED_FILTERS = ("tojson", "to_json", "to_yaml", "string", "pprint", "urlencode", "xmlattr")


def _check_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ARGUMENT:
            raise ValueError(f"the number {value} is too large here (at most {MAX_ARGUMENT})")


def _guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps Jinja2's pass_context/pass_environment marks
    def call(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        result = function(*args, **kwargs)
        if isinstance(result, str):
            if len(result) > MAX_OUTPUT:
                raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
        elif isinstance(result, list | tuple | dict):
            _check_items(len(result))
        elif isinstance(result, Iterator):
            return _counting(result)
        return result

    return call


class _Buffer(list[str]):
    """The output a ``{% set %}`` block or a macro collects: it refuses to grow past the bound
    while it is filled, not only when it is joined."""

    size = 0

    def append(self, text: str) -> None:
        self._grow(len(text))
        super().append(text)

    def extend(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.append(text)

    def _grow(self, by: int) -> None:
        self.size += by
        if self.size > MAX_OUTPUT:
            raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")


class _CodeGenerator(CodeGenerator):
    """Jinja2's compiler, with ``a ~ b`` joined by the bounded join rather than ``str_join``
    and block output collected in a bounded buffer."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.buffer()")

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.concat_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` written out: measured before it is turned into text."""
    if not isinstance(value, str):
        _check_size(value)
    return value


_LOADER_ATTRIBUTES = frozenset({"line", "lines", "first", "line_of", "empty"})


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, which also refuses operations that would build a huge value at once:
    ``"x" * 10**9``, ``2 ** 10**9``, ``"%1000000000s" % x``, ``"x".center(10**9)``."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _CodeGenerator

    # The template's output, {% set %} blocks, macros: joined by counting, never past the bound.
    concat = staticmethod(_join_bounded)

    @staticmethod
    def concat_values(values: Iterable[Any]) -> str:
        return _join_bounded(values)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Mappings and lists read from the repo keep their lines in attributes (line, lines,
        # first): ``item.line`` is the data's key ``line``, as for any mapping, never those.
        if attribute in _LOADER_ATTRIBUTES and isinstance(obj, LocMap | LocList):
            if isinstance(obj, LocMap) and attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    @staticmethod
    def buffer() -> list[str]:
        return _Buffer()

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "+":
            sized = isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple)
            if sized and len(left) + len(right) > MAX_OUTPUT:
                raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
            if isinstance(left, list | tuple) and isinstance(right, list | tuple):
                _check_items(len(left) + len(right))
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_OUTPUT:
                    raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
                if isinstance(seq, list | tuple) and isinstance(times, int):
                    _check_items(len(seq) * times)
        elif operator == "**":
            ints = isinstance(left, int) and isinstance(right, int) and abs(left) > 1
            if ints and right * math.log10(abs(left)) > MAX_INT_DIGITS:
                raise ValueError(f"the result has more than {MAX_INT_DIGITS} digits")
        elif operator == "%" and isinstance(left, str):
            values = list(right) if isinstance(right, tuple) else [right]
            _format_size(left, values, braces=False)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``"...".format``: refused when the format string has a huge width, or when its
        conversions times its largest value would pass the bound."""
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and _WIDE_FORMAT.search(owner):
            raise ValueError("a format width of more than 7 digits")
        wrapped = super().wrap_str_format(value)
        if wrapped is None or not isinstance(owner, str):
            return wrapped
        template: str = owner
        sandboxed: Callable[..., str] = wrapped

        @functools.wraps(sandboxed)
        def bounded(*args: Any, **kwargs: Any) -> str:
            values = _format_values(args, kwargs)
            _format_size(template, values, braces=True)
            return sandboxed(*args, **kwargs)

        return bounded

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if _WIDE_FORMAT.search(owner):
                raise ValueError("a format width of more than 7 digits")
            name = getattr(__obj, "__name__", "")
            if name == "join" and len(args) == 1 and not kwargs:
                return _join_bounded(args[0], owner, strict=True)
            _str_method(owner, name, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str) and len(result) > MAX_OUTPUT:
            raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
        return result


def _make_env(loader: jinja2.BaseLoader | None = None) -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        loader=loader,
        finalize=_finalize,
    )
    env.filters["to_yaml"] = _to_yaml
    env.filters["to_json"] = _to_json
    env.filters.update(_BOUNDED_FILTERS)
    for name in _COUNTED_FILTERS:
        env.filters[name] = _counted(env.filters[name])
    for name in _ITEMWISE_FILTERS:
        env.filters[name] = _itemwise(env.filters[name])
    for name in _MEASURED_FILTERS:
        env.filters[name] = _measured(env.filters[name])
    for name, function in list(env.filters.items()):
        env.filters[name] = _guarded(function)
    env.globals.pop("lipsum", None)  # placeholder text has no place in configuration
    env.filters.pop("urlize", None)  # nor HTML links (and it needs 20 times its input's memory)
    return env


class _Dumper(yaml.SafeDumper):
    """The safe dumper, which also writes the mappings and lists read from the repo (LocMap and
    LocList are dict and list subclasses, which the safe dumper refuses)."""


_Dumper.add_multi_representer(dict, _Dumper.represent_dict)
_Dumper.add_multi_representer(list, _Dumper.represent_list)


def _to_yaml(value: Any) -> str:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # names the undefined variable
    try:
        return str(yaml.dump(value, Dumper=_Dumper, default_flow_style=False, sort_keys=True))
    except yaml.representer.RepresenterError as exc:  # such as an undefined inside a list
        inner = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(inner, jinja2.Undefined):
            inner._fail_with_undefined_error()
        raise TypeError(f"to_yaml cannot write {type(inner).__name__}") from None


def _to_json(value: Any) -> str:
    import json

    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return json.dumps(value, sort_keys=True)


class Renderer:
    """Renders values and template files of one snapshot; compiled templates are cached."""

    def __init__(self, read_template: Callable[[str], str]) -> None:
        self._read_template = read_template
        self._env = _make_env(jinja2.FunctionLoader(self._load))
        self._strings: dict[str, jinja2.Template] = {}
        self._exprs: dict[str, Any] = {}

    def _load(self, name: str) -> tuple[str, str, Callable[[], bool]]:
        # The file name makes Jinja2 put the template's own line numbers into tracebacks.
        return self._read_template(name), name, lambda: True

    def _fail(self, exc: Exception, where: Location, what: str) -> ModelError:
        line = where.line
        if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno and what == "template":
            line = exc.lineno
        message = getattr(exc, "message", None) or str(exc)
        return ModelError.one(f"{what}: {message}", Location(where.file, line, where.key))

    def render_string(self, source: str, context: Mapping[str, Any], where: Location) -> Any:
        """Render a value. A value that is one ``{{ expr }}`` keeps the expression's type."""
        # Only the exact form "{{ expr }}" keeps its type: anything around it, even a newline,
        # makes the value text.
        if (
            source.startswith("{{")
            and source.endswith("}}")
            and source.count("{{") == 1
            and "{%" not in source
        ):
            return self.evaluate(source[2:-2], context, where)
        try:
            template = self._strings.get(source)
            if template is None:
                template = self._strings[source] = self._env.from_string(source)
            return _bounded(template.render(context), where)
        except _ERRORS as exc:
            raise self._fail(exc, where, "template error") from None

    def evaluate(self, expression: str, context: Mapping[str, Any], where: Location) -> Any:
        """Evaluate a Jinja2 expression (``when:``) to a value."""
        try:
            compiled = self._exprs.get(expression)
            if compiled is None:
                compiled = self._exprs[expression] = self._env.compile_expression(
                    expression, undefined_to_none=False
                )
            value = compiled(**context)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()
            _check_numbers(value)
            if _size(value) > MAX_OUTPUT:
                # A value that is one expression keeps its type, and is bounded like text.
                raise ValueError(f"the value is larger than {MAX_OUTPUT} bytes written out")
            return value
        except _ERRORS as exc:
            raise self._fail(exc, where, "expression error") from None

    def render_file(self, name: str, context: Mapping[str, Any], where: Location) -> str:
        """Render ``templates/<name>``; errors name the template file and its line."""
        try:
            return _bounded(self._env.get_template(name).render(context), where)
        except jinja2.TemplateNotFound:
            raise ModelError.one(f"template {name!r} not found under templates/", where) from None
        except jinja2.TemplateSyntaxError as exc:
            raise ModelError.one(
                f"template syntax error: {exc.message}", Location(f"templates/{name}", exc.lineno)
            ) from None
        except jinja2.TemplateError as exc:
            line = _template_line(exc, name)
            raise ModelError.one(
                f"template error: {getattr(exc, 'message', None) or exc} (rendered for {where})",
                Location(f"templates/{name}", line),
            ) from None
        except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            raise ModelError.one(
                f"template error: {exc}", Location(f"templates/{name}", _template_line(exc, name))
            ) from None


def _check_numbers(value: Any, depth: int = 0) -> None:
    """Refuse a computed integer longer than the repo's own may be (it may not even print)."""
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        raise ValueError(f"the result has an integer of more than {MAX_INT_DIGITS} digits")
    if depth < MAX_DEPTH and isinstance(value, list | tuple | dict):
        for item in value.items() if isinstance(value, dict) else value:
            _check_numbers(item, depth + 1)


def _template_line(exc: BaseException, name: str) -> int | None:
    """The template line an exception was raised from, read from its traceback."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _bounded(text: str, where: Location) -> str:
    if len(text) > MAX_OUTPUT:
        raise ModelError.one(f"template output is larger than {MAX_OUTPUT} bytes", where)
    return text
