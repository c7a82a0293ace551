"""Jinja2 in a sandbox: values that contain ``{{``, ``when:`` expressions and template files.

Undefined names are errors. Only strings written in the repo's profiles, apps and templates are
ever treated as templates; a value that comes from data or facts is inserted as text and never
rendered again, so ``{{`` in a fact stays ``{{``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from reconciler.errors import Location, ModelError
from reconciler.model.yamlload import INT_LIMIT, MAX_DEPTH, MAX_INT_DIGITS

MAX_OUTPUT = 4 * 1024 * 1024  # bytes a single render may produce
# What a template or expression may raise for what it was given: each becomes a ModelError.
# RecursionError: Jinja2's parser recurses once per level of nesting in the source.
_ERRORS = (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, RecursionError)


# Any number handed to a filter or method larger than this is refused: widths and counts that
# large would build a string or list past MAX_OUTPUT before the output bound could see it.
MAX_ARGUMENT = MAX_OUTPUT
_WIDE_FORMAT = re.compile(r"\d{8,}")  # a format width or precision of 8 digits or more


def _check_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ARGUMENT:
            raise ValueError(f"the number {value} is too large here (at most {MAX_ARGUMENT})")


def _guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps Jinja2's pass_context/pass_environment marks
    def call(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        return function(*args, **kwargs)

    return call


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, which also refuses operations that would build a huge value at once:
    ``"x" * 10**9``, ``2 ** 10**9``, ``"%1000000000s" % x``, ``"x".center(10**9)``."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_OUTPUT:
                    raise ValueError(f"the result would be larger than {MAX_OUTPUT} bytes")
        elif operator == "**":
            ints = isinstance(left, int) and isinstance(right, int) and abs(left) > 1
            if ints and right * math.log10(abs(left)) > MAX_INT_DIGITS:
                raise ValueError(f"the result has more than {MAX_INT_DIGITS} digits")
        elif operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise ValueError("a format width of more than 7 digits")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``"...".format``: refused when the format string has a huge width."""
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and _WIDE_FORMAT.search(owner):
            raise ValueError("a format width of more than 7 digits")
        return super().wrap_str_format(value)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and _WIDE_FORMAT.search(owner):
            raise ValueError("a format width of more than 7 digits")
        return super().call(__context, __obj, *args, **kwargs)


def _make_env(loader: jinja2.BaseLoader | None = None) -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        loader=loader,
    )
    env.filters["to_yaml"] = _to_yaml
    env.filters["to_json"] = _to_json
    for name, function in list(env.filters.items()):
        env.filters[name] = _guarded(function)
    env.globals.pop("lipsum", None)  # placeholder text has no place in configuration
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
