"""Step conditions: trigger rules and safe CEL expressions, each verdict explained.

The planner decides *when* a step's condition is looked at (every dependency terminal);
this module decides *whether* the step runs, and says why (DESIGN §3 "Conditions").

A condition is a trigger rule AND an optional expression (DESIGN §3 "Conditions"):
``{"type": rule, "expression": str | None, "depends_on": [step ids] | None}``.

Trigger rules (anchored on Airflow's trigger rules; ``dep_outcomes`` maps dependency
step name -> "success" | "failed" | "skipped" | "cancelled" | "upstream_failed"):

==============  ==================================================  ===================
rule            runs when                                           no dependencies
==============  ==================================================  ===================
on_success      every dependency succeeded or was skipped (default) runs (vacuous)
on_failure      some dependency failed or is upstream_failed        skipped (none failed)
always          always                                              runs
one_success     at least one dependency succeeded                   skipped (none did)
none_failed     no dependency failed / upstream_failed              runs (vacuous)
==============  ==================================================  ===================

An expression never replaces the rule (as GitHub's ``if:`` implies ``success()``, GitLab's
``rules`` keep ``when: on_success`` and Argo evaluates ``when`` only once ``depends``
holds): the step runs when the rule holds *and* the expression is true; when the rule
does not hold the expression is not evaluated. The one way out is GitHub's: an
expression that calls a status function (``always()``, ``success()``, ``failure()``,
``cancelled()``) under the default rule ``on_success`` decides alone, so
``always() && variables.force == "yes"`` runs after a failure. Under any other rule the
status functions are ordinary predicates ANDed with the rule. ``success()`` is the
on_success rule over the dependencies (and false once the execution is cancelled),
``failure()`` the on_failure rule, ``cancelled()`` whether cancel was requested,
``always()`` true.

The legacy AnsFlow shape ``{"type": "expression", "expression": ...}`` is read as
``on_success`` plus the expression (:func:`normalize_conditions`, applied on read and
on save), so stored definitions and running snapshots keep loading.

A skip is ``upstream_failed`` (it propagates the failure downstream, Airflow's state)
when a dependency failed or was upstream_failed and the skip came from a rule that
needs success (on_success, one_success, none_failed) or from an expression that opted
out of on_success: so no on_success step downstream of a failure ever runs.

Expressions
-----------
CEL (https://github.com/google/cel-spec) over the context ``variables``, ``trigger``,
``steps`` (name -> {status, outputs, exit_code}), ``previous`` and ``execution``.
AnsFlow-style text is accepted: :func:`translate` drops ``$`` before names and maps
``===``/``!==`` to ``==``/``!=`` outside string literals and comments.

Evaluator choice: cel-python (``celpy``, PyPI ``cel-python==0.5.0``), the interpreted
runner (never its CompiledRunner, which uses Python ``exec``). Compared with the Rust
bindings (PyPI ``common-expression-language==0.10.0``):

* correctness: both pass the cases we need; the Rust crate follows the newer spec
  (heterogeneous equality: ``null == 0`` is false, ``1 == 1.0`` true) where celpy
  reports "no matching overload". We close that gap by registering spec-conformant
  ``==``/``!=``/ordering/``in`` overloads (:func:`_cel_eq`).
* error positions: both report parse-error positions; neither positions evaluation
  errors, but celpy errors carry the lark tree node, which gives us exact offsets.
* speed of a typical ``a == "x" && b == "y"``: Rust ~6 µs, celpy ~190 µs (compile
  ~170 µs, cached). The planner evaluates at most a few hundred per pass: fine.
* hostile input, the deciding point: the Rust call holds the GIL and has no cost or
  size limit and cannot be interrupted; ``["a"].map(x, x + x)`` chained 27 times (394
  characters) allocated 424 MB in 0.7 s and 30+ links exhaust memory, while nested
  ``map`` comprehensions run for hours inside a 4 kB expression. celpy is pure Python,
  so our evaluator subclass enforces a real budget at every AST node: a step count
  (deterministic, like cel-go's cost limit), a wall-clock deadline and a size cap on
  every intermediate string/list/map. Its ``matches()`` uses RE2 (linear time). It is
  also already a dependency (lark, google-re2, pendulum, jmespath, pyyaml) while the
  Rust wheel pulls typer, rich, pydantic and prompt-toolkit for its CLI.

Limits (all refusals are Verdicts with ``error`` set; nothing here raises):
``MAX_EXPRESSION_LENGTH`` characters before any parsing; ``MAX_NESTING`` bracket levels
(checked by the tokenizer, before parsing); ``MAX_AST_DEPTH`` parse-tree levels (bounds
the interpreter's recursion, so no RecursionError); ``MAX_EVAL_STEPS`` node visits and
``EVAL_TIME_BUDGET`` seconds per evaluation; ``MAX_VALUE_SIZE`` characters/elements per
intermediate value. celpy's ``Environment`` is not used because its constructor sets
the process-wide recursion limit; we build the parser and activation directly.

Positions in errors are 0-based character offsets into the text the user wrote.
"""
from __future__ import annotations

import datetime as _dt
import functools
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lark
import re2 as _re2
from celpy import celtypes
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import Activation, CELEvalError, Evaluator, base_functions

__all__ = [
    "Verdict",
    "RULES",
    "STATUS_FUNCTIONS",
    "normalize_conditions",
    "uses_status_functions",
    "runs_on_cancel",
    "OUTCOMES",
    "CONTEXT_NAMES",
    "MAX_EXPRESSION_LENGTH",
    "validate_conditions",
    "evaluate_rule",
    "evaluate_expression",
    "check_expression",
    "translate",
]

RULES = ("on_success", "on_failure", "always", "one_success", "none_failed")
# AnsFlow's condition types that are not rules of their own: read as (rule, the expression)
LEGACY_TYPES = {"expression": "on_success"}
STATUS_FUNCTIONS = ("always", "success", "failure", "cancelled")
OUTCOMES = ("success", "failed", "skipped", "cancelled", "upstream_failed")
CONTEXT_NAMES = ("variables", "trigger", "steps", "previous", "execution")

MAX_EXPRESSION_LENGTH = 4096
MAX_NESTING = 20            # bracket levels ( [ {
MAX_AST_DEPTH = 256         # parse-tree levels; one bracket level is ~10
MAX_EVAL_STEPS = 20_000     # AST node visits per evaluation
EVAL_TIME_BUDGET = 2.0      # seconds: a far backstop only; the node-visit budget is the real, deterministic limit
# (a tight clock made verdicts depend on machine load: plan() must give the same decisions for the same snapshot)
MAX_VALUE_SIZE = 100_000    # characters of a string / elements of a list or map
MAX_CONTEXT_DEPTH = 32      # nesting of the context values
MAX_DEPENDS_ON = 1000

_FAILED = ("failed", "upstream_failed")
_OUTCOME_WORDS = {
    "success": "succeeded",
    "failed": "failed",
    "skipped": "was skipped",
    "cancelled": "was cancelled",
    "upstream_failed": "did not run (upstream failure)",
}


@dataclass(frozen=True)
class Verdict:
    result: bool | None          # None only when error
    error: str | None
    explanation: str
    position: int | None = None  # 0-based offset into the expression text, for errors
    upstream_failed: bool = False  # a skip that propagates a dependency's failure (see module doc)

    def to_dict(self) -> dict:
        return {"result": self.result, "error": self.error, "explanation": self.explanation}


def _error(message: str, position: int | None = None) -> Verdict:
    return Verdict(None, message, f"error: {message}", position)


# --------------------------------------------------------------------------- tokenizer

_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING_PREFIXES = {"r", "R", "b", "B", "rb", "rB", "Rb", "RB", "br", "bR", "Br", "BR"}


@dataclass(frozen=True)
class _Scan:
    text: str                  # CEL text
    offsets: tuple[int, ...]   # offsets[i] = original offset of text[i]; len(text)+1 entries
    max_depth: int
    deep_at: int | None        # original offset of the first bracket beyond MAX_NESTING


@functools.lru_cache(maxsize=1024)
def _scan(src: str) -> _Scan:
    out: list[str] = []
    offs: list[int] = []
    depth = max_depth = 0
    deep_at: int | None = None
    i, n = 0, len(src)

    def emit(chunk: str, start: int) -> None:
        out.append(chunk)
        offs.extend(range(start, start + len(chunk)))

    while i < n:
        c = src[i]
        if (c == "$" and i + 1 < n and _IDENT_START.match(src[i + 1])
                and not (i and (src[i - 1].isalnum() or src[i - 1] == "_"))):
            i += 1                                  # $name -> name (not a$b: that stays an error)
            continue
        if _IDENT_START.match(c):
            m = _IDENT.match(src, i)
            word = m.group()
            j = m.end()
            if word in _STRING_PREFIXES and j < n and src[j] in "\"'":
                end = _string_end(src, j, raw="r" in word.lower())
                emit(src[i:end], i)
                i = end
            else:
                emit(word, i)
                i = j
            continue
        if c in "\"'":
            end = _string_end(src, i, raw=False)
            emit(src[i:end], i)
            i = end
            continue
        if src.startswith("//", i):
            end = src.find("\n", i)
            end = n if end < 0 else end
            emit(src[i:end], i)
            i = end
            continue
        if src.startswith("===", i) or src.startswith("!==", i):
            emit(src[i:i + 2], i)                   # === -> ==, !== -> !=
            i += 3
            continue
        if c in "([{":
            depth += 1
            if depth > max_depth:
                max_depth = depth
            if depth > MAX_NESTING and deep_at is None:
                deep_at = i
        elif c in ")]}":
            depth = max(0, depth - 1)
        emit(c, i)
        i += 1
    offs.append(n)
    return _Scan("".join(out), tuple(offs), max_depth, deep_at)


def _string_end(src: str, i: int, raw: bool) -> int:
    """Offset just past the string literal whose opening quote is at ``i``."""
    q = src[i]
    n = len(src)
    if src.startswith(q * 3, i):
        j = i + 3
        while j < n:
            if not raw and src[j] == "\\":
                j += 2
                continue
            if src.startswith(q * 3, j):
                return j + 3
            j += 1
        return n
    j = i + 1
    while j < n:
        ch = src[j]
        if not raw and ch == "\\":
            j += 2
            continue
        if ch == q or ch == "\n":
            return j + 1 if ch == q else j
        j += 1
    return n


def translate(expression: str) -> str:
    """AnsFlow-style text -> CEL: ``$name`` -> ``name``, ``===`` -> ``==``, ``!==`` -> ``!=``,
    outside string literals and ``//`` comments. Everything else is left as written."""
    return _scan(expression).text


# --------------------------------------------------------------------------- compile

_parser_lock = threading.Lock()

# celpy logs every activation (all context values) at DEBUG: keep it quiet unless the
# application configured that logger on purpose.
if logging.getLogger("celpy").level == logging.NOTSET:
    logging.getLogger("celpy").setLevel(logging.INFO)
_parser: CELParser | None = None

_MACROS = {"map", "filter", "all", "exists", "exists_one"}
_GLOBAL_MACROS = {"has", "dyn"}
_TYPE_NAMES = {"int", "uint", "double", "string", "bool", "bytes", "list", "map",
               "null_type", "type", "timestamp", "duration"}
_KNOWN_FUNCTIONS = ({k for k in base_functions if not k.startswith(("_", "!", "-"))}
                    | _MACROS | _GLOBAL_MACROS)
_GLOBAL_FUNCTIONS = _KNOWN_FUNCTIONS | set(STATUS_FUNCTIONS)   # status functions: f() only, never x.f()


@dataclass(frozen=True)
class _Program:
    source: str            # what the user wrote
    text: str              # CEL text
    offsets: tuple[int, ...]
    ast: lark.Tree

    def pos(self, cel_offset: int | None) -> int | None:
        if cel_offset is None:
            return None
        cel_offset = max(0, min(cel_offset, len(self.offsets) - 1))
        return self.offsets[cel_offset]

    def snippet(self, tree: Any) -> str:
        meta = getattr(tree, "meta", None)
        start, end = getattr(meta, "start_pos", None), getattr(meta, "end_pos", None)
        if start is None or end is None:
            # celpy's lexer callback builds true/false/null tokens without positions
            if not isinstance(tree, lark.Tree):
                return "?"
            return _short(" ".join(str(t) for t in tree.scan_values(lambda v: isinstance(v, lark.Token))), 100)
        return _short(" ".join(self.text[start:end].split()), 100)


@dataclass(frozen=True)
class _Problem:
    message: str
    position: int | None


def _get_parser() -> CELParser:
    global _parser
    if _parser is None:
        _parser = CELParser(tree_class=lark.Tree)
    return _parser


@functools.lru_cache(maxsize=1024)
def _compile_cel(text: str) -> lark.Tree | _Problem:
    """Parse CEL text (cached). Positions in a _Problem are offsets into ``text``."""
    try:
        with _parser_lock:
            ast = _get_parser().parse(text)
    except CELParseError as ex:
        return _syntax_problem(ex, text)
    except RecursionError:
        return _Problem("Expression is nested too deeply", None)
    except Exception as ex:  # lark raises a few other kinds on odd input
        return _Problem(f"Syntax error: {_short(str(ex))}", None)
    depth = _tree_depth(ast)
    if depth > MAX_AST_DEPTH:
        return _Problem(f"Expression is nested too deeply ({depth} levels, limit {MAX_AST_DEPTH})", 0)
    problem = _check_names(ast)
    return problem if problem is not None else ast


def _syntax_problem(ex: CELParseError, text: str) -> _Problem:
    cause = ex.__context__
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        pos = cause.pos_in_stream
        return _Problem(f"Syntax error at position {{pos}}: unexpected {text[pos:pos + 1]!r}", pos)
    if isinstance(cause, lark.exceptions.UnexpectedToken):
        tok = cause.token
        if tok.type == "$END":
            return _Problem("Syntax error at position {pos}: unexpected end of expression", len(text))
        pos = tok.start_pos if tok.start_pos is not None else len(text)
        return _Problem(f"Syntax error at position {{pos}}: unexpected {str(tok)!r}", pos)
    return _Problem(f"Syntax error: {_short(str(ex).splitlines()[0] if str(ex) else 'invalid expression')}", None)


def _tree_depth(ast: lark.Tree) -> int:
    deepest = 0
    stack = [(ast, 1)]
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest = d
            if d > MAX_AST_DEPTH:
                return d
        stack.extend((c, d + 1) for c in node.children if isinstance(c, lark.Tree))
    return deepest


def _bare_ident(tree: Any) -> str | None:
    """The name if ``tree`` (an expr) is just an identifier, else None."""
    node = tree
    while isinstance(node, lark.Tree):
        if node.data == "ident":
            tok = node.children[0]
            return str(tok)
        if len(node.children) != 1:
            return None
        node = node.children[0]
    return None


def _check_names(ast: lark.Tree) -> _Problem | None:
    """Unknown root names and unknown functions, found statically (macro variables in scope)."""
    stack: list[tuple[lark.Tree, frozenset[str]]] = [(ast, frozenset())]
    found: list[tuple[int, str]] = []
    while stack:
        node, bound = stack.pop()
        if node.data == "ident":
            tok = node.children[0]
            name = str(tok)
            if name not in CONTEXT_NAMES and name not in _TYPE_NAMES and name not in bound:
                found.append((tok.start_pos or 0, f"Unknown name '{name}' at position {{pos}}"
                              f" (use {', '.join(CONTEXT_NAMES)})"))
            continue
        if node.data == "ident_arg":
            tok = node.children[0]
            if str(tok) not in _GLOBAL_FUNCTIONS:
                found.append((tok.start_pos or 0, f"Unknown function '{tok}' at position {{pos}}"))
            elif str(tok) in STATUS_FUNCTIONS and len(node.children) > 1:
                found.append((tok.start_pos or 0, f"{tok}() takes no arguments (at position {{pos}})"))
        if node.data == "member_dot_arg":
            target, tok = node.children[0], node.children[1]
            args = node.children[2] if len(node.children) > 2 else None
            name = str(tok)
            if name not in _KNOWN_FUNCTIONS:
                found.append((tok.start_pos or 0, f"Unknown function '{name}' at position {{pos}}"))
            if name in _MACROS and isinstance(args, lark.Tree) and args.children:
                var = _bare_ident(args.children[0])
                stack.append((target, bound))
                inner = bound | {var} if var else bound
                stack.extend((c, inner) for c in args.children[1:] if isinstance(c, lark.Tree))
                continue
        stack.extend((c, bound) for c in node.children if isinstance(c, lark.Tree))
    if not found:
        return None
    pos, message = min(found)
    return _Problem(message, pos)


def _prepare(expression: str) -> _Program | _Problem:
    scan = _scan(expression)
    if scan.deep_at is not None:
        return _Problem(f"Expression is nested too deeply at position {scan.deep_at}"
                        f" (more than {MAX_NESTING} levels of brackets)", scan.deep_at)
    compiled = _compile_cel(scan.text)
    if isinstance(compiled, _Problem):
        pos = None
        if compiled.position is not None:
            pos = scan.offsets[max(0, min(compiled.position, len(scan.offsets) - 1))]
        return _Problem(compiled.message.replace("{pos}", str(pos)), pos)
    return _Program(expression, scan.text, scan.offsets, compiled)


def _precheck(expression: Any) -> _Problem | None:
    if not isinstance(expression, str):
        return _Problem(f"Expression must be a string, not {type(expression).__name__}", None)
    if len(expression) > MAX_EXPRESSION_LENGTH:
        return _Problem(f"Expression is too long: {len(expression)} characters"
                        f" (limit {MAX_EXPRESSION_LENGTH})", None)
    if not expression.strip():
        return _Problem("Expression is empty", None)
    return None


def check_expression(expression: Any) -> _Problem | None:
    """Static check (length, syntax, names, depth): None when the expression compiles."""
    problem = _precheck(expression)
    if problem is not None:
        return problem
    try:
        prepared = _prepare(expression)
    except Exception as ex:  # never raise
        return _Problem(f"Invalid expression: {_short(str(ex))}", None)
    return prepared if isinstance(prepared, _Problem) else None


# --------------------------------------------------------------------------- semantics

_NUMERIC = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _kind(v: Any) -> str:
    if v is None or isinstance(v, celtypes.NullType):
        return "null"
    if isinstance(v, bool) or isinstance(v, celtypes.BoolType):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bytes):
        return "bytes"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, Mapping):
        return "map"
    if isinstance(v, _dt.datetime):
        return "timestamp"
    if isinstance(v, _dt.timedelta):
        return "duration"
    return type(v).__name__


def _cel_eq(a: Any, b: Any) -> bool:
    """CEL heterogeneous equality: values of different kinds are unequal, numbers compare
    across int/uint/double, lists and maps compare element-wise."""
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        return False
    if ka == "null":
        return True
    if ka == "bool":
        return bool(a) == bool(b)
    if ka == "list":
        return len(a) == len(b) and all(_cel_eq(x, y) for x, y in zip(a, b))
    if ka == "map":
        if len(a) != len(b):
            return False
        for k, v in a.items():
            if k not in b or not _cel_eq(v, b[k]):
                return False
        return True
    if ka == "number":
        return float(a) == float(b) if isinstance(a, float) or isinstance(b, float) else int(a) == int(b)
    return bool(a == b)


def _wrap_errors(fn):
    @functools.wraps(fn)
    def wrapper(a, b):
        if isinstance(a, CELEvalError):
            return a
        if isinstance(b, CELEvalError):
            return b
        return fn(a, b)
    return wrapper


def _ordered(op):
    def compare(a: Any, b: Any) -> celtypes.BoolType:
        ka, kb = _kind(a), _kind(b)
        if ka != kb or ka in ("null", "list", "map"):
            raise TypeError(f"no such overload: {_cel_type_name(a)} and {_cel_type_name(b)}")
        if ka == "number":
            return celtypes.BoolType(op(float(a), float(b)) if isinstance(a, float) or isinstance(b, float)
                                     else op(int(a), int(b)))
        return celtypes.BoolType(op(a, b))
    return compare


def _in(item: Any, container: Any) -> celtypes.BoolType:
    if isinstance(container, Mapping):
        return celtypes.BoolType(any(_cel_eq(item, k) for k in container))
    if isinstance(container, (list, tuple)):
        return celtypes.BoolType(any(_cel_eq(item, x) for x in container))
    raise TypeError(f"no such overload: {_cel_type_name(item)} in {_cel_type_name(container)}")


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> Any:
    options = _re2.Options()
    options.log_errors = False        # no absl noise on stderr for a user's bad pattern
    return _re2.compile(pattern, options=options)


def _matches(text: Any, pattern: Any) -> Any:
    """CEL ``matches`` with RE2 (linear time), a compiled-pattern cache and a clear error."""
    if isinstance(text, CELEvalError):
        return text
    if not isinstance(text, str) or not isinstance(pattern, str):
        raise TypeError(f"no such overload: matches({_cel_type_name(text)}, {_cel_type_name(pattern)})")
    try:
        compiled = _regex(str(pattern))
    except Exception:
        return CELEvalError(f"invalid regular expression {_short(str(pattern), 60)!r}", ValueError, ())
    return celtypes.BoolType(compiled.search(str(text)) is not None)


_FUNCTIONS = {
    "matches": _matches,
    "_==_": _wrap_errors(lambda a, b: celtypes.BoolType(_cel_eq(a, b))),
    "_!=_": _wrap_errors(lambda a, b: celtypes.BoolType(not _cel_eq(a, b))),
    "_<_": _wrap_errors(_ordered(lambda x, y: x < y)),
    "_<=_": _wrap_errors(_ordered(lambda x, y: x <= y)),
    "_>_": _wrap_errors(_ordered(lambda x, y: x > y)),
    "_>=_": _wrap_errors(_ordered(lambda x, y: x >= y)),
    "_in_": _wrap_errors(_in),
}


class _BudgetExceeded(Exception):
    """Not a subclass of anything celpy catches, so it always reaches us."""


class _Budget:
    __slots__ = ("steps", "deadline")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + EVAL_TIME_BUDGET


class _BudgetEvaluator(Evaluator):
    """celpy's interpreter with a cost limit checked at every node."""

    def __init__(self, ast: lark.Tree, activation: Activation, budget: _Budget) -> None:
        super().__init__(ast, activation)
        self._budget = budget

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:  # macros
        return _BudgetEvaluator(ast, self.activation, self._budget)

    def _visit_tree(self, tree):  # every node goes through here (visit and visit_children)
        b = self._budget
        b.steps += 1
        if b.steps > MAX_EVAL_STEPS:
            raise _BudgetExceeded(f"Evaluation stopped: more than {MAX_EVAL_STEPS} steps")
        if time.monotonic() > b.deadline:
            raise _BudgetExceeded(f"Evaluation stopped: took longer than {EVAL_TIME_BUDGET} s")
        value = super()._visit_tree(tree)
        if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > MAX_VALUE_SIZE:
            raise _BudgetExceeded(f"Evaluation stopped: a value grew beyond {MAX_VALUE_SIZE}"
                                  " characters or elements")
        return value


class _ContextError(Exception):
    pass


_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _to_cel(v: Any, depth: int = 0) -> Any:
    if depth > MAX_CONTEXT_DEPTH:
        raise _ContextError(f"context values nested deeper than {MAX_CONTEXT_DEPTH} levels")
    if v is None:
        return None
    if isinstance(v, bool):
        return celtypes.BoolType(v)
    if isinstance(v, int):
        return celtypes.IntType(v) if _INT64[0] <= v <= _INT64[1] else celtypes.DoubleType(float(v))
    if isinstance(v, float):
        return celtypes.DoubleType(v)
    if isinstance(v, str):
        return celtypes.StringType(v)
    if isinstance(v, (bytes, bytearray)):
        return celtypes.BytesType(bytes(v))
    if isinstance(v, Mapping):
        out = celtypes.MapType()
        for k, val in v.items():
            key = (celtypes.IntType(k) if isinstance(k, int) and not isinstance(k, bool)
                   and _INT64[0] <= k <= _INT64[1] else celtypes.StringType(str(k)))
            out[key] = _to_cel(val, depth + 1)
        return out
    if isinstance(v, (list, tuple, set, frozenset)):
        return celtypes.ListType([_to_cel(x, depth + 1) for x in v])
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=_dt.timezone.utc)
        return celtypes.TimestampType(v)
    if isinstance(v, _dt.timedelta):
        return celtypes.DurationType(v)
    return celtypes.StringType(str(v))


def _activation_values(context: Any) -> dict[str, Any]:
    context = context if isinstance(context, Mapping) else {}
    values = {}
    for name in CONTEXT_NAMES:
        raw = context.get(name)
        values[name] = _to_cel(raw if raw is not None else {})
    return values


_DEFAULT_STATUS = {"always": True, "success": True, "failure": False, "cancelled": False}


def _status_functions(status: Mapping[str, bool] | None) -> dict[str, Any]:
    """``_FUNCTIONS`` plus the four zero-argument status functions answering from ``status``."""
    got = dict(_DEFAULT_STATUS)
    if status:
        got.update({k: bool(v) for k, v in status.items() if k in got})
    out = dict(_FUNCTIONS)
    for name, value in got.items():
        out[name] = (lambda v: lambda: celtypes.BoolType(v))(value)
    return out


def _run(tree: lark.Tree, values: dict[str, Any], budget: _Budget | None = None,
         functions: dict[str, Any] | None = None) -> Any:
    """Evaluate ``tree`` (the whole AST or a sub-tree); raises CELEvalError/_BudgetExceeded."""
    activation = Activation(annotations=None, functions=functions or _status_functions(None), package=None)
    return _BudgetEvaluator(tree, activation, budget or _Budget()).evaluate(values)


# --------------------------------------------------------------------------- formatting

_CEL_TYPE_NAMES = {
    "NoneType": "null", "NullType": "null", "BoolType": "bool", "IntType": "int",
    "UintType": "uint", "DoubleType": "double", "StringType": "string", "BytesType": "bytes",
    "ListType": "list", "MapType": "map", "TimestampType": "timestamp",
    "DurationType": "duration", "TypeType": "type",
}
_OP_SYMBOLS = {"relation_eq": "==", "relation_ne": "!=", "relation_lt": "<", "relation_le": "<=",
               "relation_gt": ">", "relation_ge": ">=", "relation_in": "in",
               "multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%",
               "addition_add": "+", "addition_sub": "-"}


def _cel_type_name(v: Any) -> str:
    return _CEL_TYPE_NAMES.get(type(v).__name__, type(v).__name__)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(v: Any, limit: int = 80) -> str:
    return _short(_fmt_inner(v, 0), limit)


def _fmt_inner(v: Any, depth: int) -> str:
    if isinstance(v, type):
        return _CEL_TYPE_NAMES.get(v.__name__, v.__name__)
    k = _kind(v)
    if k == "null":
        return "null"
    if k == "bool":
        return "true" if v else "false"
    if k == "number":
        return repr(float(v)) if isinstance(v, float) else str(int(v))
    if k == "string":
        return repr(str(v)[:200])
    if k == "bytes":
        return repr(bytes(v)[:200])
    if depth > 3:
        return "…"
    if k == "list":
        items = [_fmt_inner(x, depth + 1) for x in list(v)[:10]]
        return "[" + ", ".join(items) + (", …" if len(v) > 10 else "") + "]"
    if k == "map":
        items = [f"{_fmt_inner(a, depth + 1)}: {_fmt_inner(b, depth + 1)}" for a, b in list(v.items())[:10]]
        return "{" + ", ".join(items) + (", …" if len(v) > 10 else "") + "}"
    if k == "timestamp":
        return v.isoformat()
    return str(v)


_PY_CLASS = re.compile(r"<class '(?:[\w]+\.)*(\w+)'>")
_OVERLOAD = re.compile(r"found no matching overload for (?:Token\('RULE', )?'(\w+)'\)? applied to "
                       r"'\(<class '([\w.]+)'>, <class '([\w.]+)'>\)'")


def _eval_error_message(program: _Program, err: CELEvalError) -> tuple[str, int | None]:
    tree = getattr(err, "tree", None)
    text = str(err.args[0]) if err.args else "evaluation error"
    cel_pos = None
    if isinstance(tree, lark.Tree) and getattr(tree.meta, "start_pos", None) is not None:
        cel_pos = tree.meta.start_pos
    elif getattr(getattr(err, "token", None), "start_pos", None) is not None:
        cel_pos = err.token.start_pos
    if isinstance(tree, lark.Tree) and tree.data == "member_dot" and "no such member" in text:
        obj, tok = tree.children[0], tree.children[1]
        pos = program.pos(tok.start_pos)
        return f"Unknown key '{tok}' in {program.snippet(obj)} at position {pos}", pos
    if isinstance(tree, lark.Tree) and tree.data == "member_index" and text == "no such key":
        obj, index = tree.children[0], tree.children[1]
        pos = program.pos(getattr(index.meta, "start_pos", None) or cel_pos)
        return f"Unknown key {program.snippet(index)} in {program.snippet(obj)} at position {pos}", pos
    if (isinstance(tree, lark.Tree) and tree.data == "member_dot"
            and "does not support field selection" in text):
        obj, tok = tree.children[0], tree.children[1]
        pos = program.pos(tok.start_pos)
        return (f"Cannot select '{tok}' at position {pos}: {program.snippet(obj)} is not a map", pos)
    pos = program.pos(cel_pos)
    m = _OVERLOAD.search(text)
    if m:
        op = _OP_SYMBOLS.get(m.group(1), m.group(1))
        left = _CEL_TYPE_NAMES.get(m.group(2).rsplit(".", 1)[-1], m.group(2))
        right = _CEL_TYPE_NAMES.get(m.group(3).rsplit(".", 1)[-1], m.group(3))
        text = f"no such overload: {left} {op} {right}"
    elif "<class '" in text:      # other celpy messages name Python classes: use CEL type names
        text = _PY_CLASS.sub(lambda c: _CEL_TYPE_NAMES.get(c.group(1), c.group(1)), text)
        text = text.replace("found no matching overload", "no such overload")
    elif text.startswith("undeclared reference to"):
        text = text.split(" (in activation", 1)[0]
    where = f" at position {pos}" if pos is not None else ""
    return f"Evaluation error{where}: {_short(text, 200)}", pos


# --------------------------------------------------------------------------- explanation

_PASSTHROUGH = {"expr", "conditionalor", "conditionaland", "relation", "addition",
                "multiplication", "unary", "member", "primary", "paren_expr"}


def _unwrap(tree: lark.Tree) -> lark.Tree:
    while (tree.data in _PASSTHROUGH and len(tree.children) == 1
           and isinstance(tree.children[0], lark.Tree)):
        tree = tree.children[0]
    return tree


def _flatten(tree: lark.Tree, kind: str) -> list[lark.Tree]:
    """Operands of a left-recursive ``kind`` chain (conditionalor / conditionaland)."""
    parts: list[lark.Tree] = []
    node = tree
    while node.data == kind and len(node.children) == 2:
        parts.append(node.children[1])
        node = node.children[0]
    parts.append(node)
    parts.reverse()
    return parts


def _has_ident(tree: lark.Tree) -> bool:
    return any(t.data == "ident" for t in tree.iter_subtrees())


class _Explainer:
    def __init__(self, program: _Program, values: dict[str, Any], functions: dict[str, Any]) -> None:
        self.p = program
        self.values = values
        self.functions = functions
        self.budget = _Budget()   # one budget for all the sub-evaluations of an explanation

    def value(self, tree: lark.Tree) -> tuple[bool, Any]:
        try:
            return True, _run(tree, self.values, self.budget, self.functions)
        except CELEvalError as err:
            return False, _eval_error_message(self.p, err)[0]

    def explain(self, tree: lark.Tree, result: Any, depth: int = 0) -> str:
        node = _unwrap(tree)
        if depth > 4:
            return f"{self.p.snippet(node)} was {_fmt(result)}"
        if node.data == "conditionalor" and len(node.children) == 2:
            return self._or(node, bool(result), depth)
        if node.data == "conditionaland" and len(node.children) == 2:
            return self._and(node, bool(result), depth)
        if node.data == "relation" and len(node.children) == 2:
            return self._relation(node, result)
        if (node.data == "unary" and len(node.children) == 2
                and isinstance(node.children[0], lark.Tree) and node.children[0].data == "unary_not"):
            ok, inner = self.value(node.children[1])
            if ok and _kind(inner) == "bool":
                return f"{self.explain(node.children[1], inner, depth + 1)} (negated by !)"
        return f"{self.p.snippet(node)} was {_fmt(result)}"

    def _parts(self, parts: list[lark.Tree]) -> list[tuple[lark.Tree, bool, Any]]:
        out = []
        for part in parts:
            ok, v = self.value(part)
            out.append((part, ok, v))
        return out

    def _describe(self, part: lark.Tree, ok: bool, v: Any, depth: int) -> str:
        if not ok:
            return f"{self.p.snippet(part)} failed ({v})"
        return self.explain(part, v, depth + 1)

    def _and(self, node: lark.Tree, result: bool, depth: int) -> str:
        parts = self._parts(_flatten(node, "conditionaland"))
        n = len(parts)
        if not result:
            for i, (part, ok, v) in enumerate(parts, 1):
                if ok and _kind(v) == "bool" and not v:
                    return f"condition {i} of {n} failed: {self.explain(part, v, depth + 1)}"
            return "; ".join(self._describe(*p, depth) for p in parts)
        return f"all {n} conditions held: " + "; ".join(self._describe(*p, depth) for p in parts)

    def _or(self, node: lark.Tree, result: bool, depth: int) -> str:
        parts = self._parts(_flatten(node, "conditionalor"))
        n = len(parts)
        if result:
            for i, (part, ok, v) in enumerate(parts, 1):
                if ok and _kind(v) == "bool" and v:
                    return f"alternative {i} of {n} held: {self.explain(part, v, depth + 1)}"
        return f"none of {n} alternatives held: " + "; ".join(self._describe(*p, depth) for p in parts)

    def _relation(self, node: lark.Tree, result: Any) -> str:
        op_tree, right = node.children[0], node.children[1]
        op = op_tree.data
        left = op_tree.children[0]
        ok_l, lv = self.value(left)
        ok_r, rv = self.value(right)
        if not (ok_l and ok_r):
            return f"{self.p.snippet(node)} was {_fmt(result)}"
        lt, rt = self.p.snippet(left), self.p.snippet(right)
        if op in ("relation_eq", "relation_ne") and not _has_ident(left) and _has_ident(right):
            lt, rt, lv, rv = rt, lt, rv, lv            # "prod" == variables.env: name the variable
        if op == "relation_eq":
            return f"{lt} was {_fmt(lv)}" if result else f"{lt} was {_fmt(lv)}, expected {_fmt(rv)}"
        if op == "relation_ne":
            return (f"{lt} was {_fmt(lv)}, not {_fmt(rv)}" if result
                    else f"{lt} was {_fmt(lv)}, expected anything but {_fmt(rv)}")
        if op == "relation_in":
            container = _fmt(rv) if not _has_ident(right) else f"{rt} ({_fmt(rv)})"
            return (f"{lt} was {_fmt(lv)}, found in {container}" if result
                    else f"{lt} was {_fmt(lv)}, expected one of {container}")
        sym = _OP_SYMBOLS[op]
        return (f"{lt} was {_fmt(lv)} ({sym} {_fmt(rv)})" if result
                else f"{lt} was {_fmt(lv)}, expected {sym} {_fmt(rv)}")


# --------------------------------------------------------------------------- public API

def evaluate_expression(expression: str, context: dict, status: Mapping[str, bool] | None = None) -> Verdict:
    """Evaluate a CEL (or AnsFlow-style) boolean expression. Never raises. ``status`` answers the
    status functions (name -> bool); unset ones answer as for a run where everything succeeded."""
    problem = check_expression(expression)
    if problem is not None:
        return _error(problem.message, problem.position)
    try:
        program = _prepare(expression)
        assert isinstance(program, _Program)
        values = _activation_values(context)
    except _ContextError as ex:
        return _error(f"Invalid context: {ex}")
    except Exception as ex:
        return _error(f"Invalid context: {_short(str(ex), 200)}")
    functions = _status_functions(status)
    try:
        result = _run(program.ast, values, None, functions)
    except CELEvalError as err:
        message, pos = _eval_error_message(program, err)
        return _error(message, pos)
    except _BudgetExceeded as ex:
        return _error(str(ex))
    except RecursionError:
        return _error("Evaluation stopped: expression nested too deeply")
    except MemoryError:
        return _error("Evaluation stopped: out of memory")
    except Exception as ex:  # a celpy bug or an odd value must not crash the planner
        return _error(f"Evaluation error: {_short(str(ex) or type(ex).__name__, 200)}")
    if _kind(result) != "bool":
        return _error(f"Expression must evaluate to true or false, got {_cel_type_name(result)}"
                      f" {_fmt(result)}")
    result = bool(result)
    try:
        detail = _Explainer(program, values, functions).explain(program.ast, result)
    except Exception:  # budget, recursion...: the verdict stands, the detail is shorter
        detail = f"{_short(program.text, 200)} was {'true' if result else 'false'}"
    return Verdict(result, None, _short(f"{'true' if result else 'false'}: {detail}", 600))


def normalize_conditions(conditions: Any) -> Any:
    """The stored shape of a condition: the legacy ``type: "expression"`` becomes
    ``on_success`` + the expression, a missing type is spelled ``on_success`` beside an
    expression (and stays missing without one), a blank expression is dropped. Anything that is not a dict is returned as it is (validation
    refuses it). Idempotent; never mutates its argument."""
    if not isinstance(conditions, Mapping):
        return conditions
    out = dict(conditions)
    rule = out.get("type")
    if isinstance(rule, str) and rule in LEGACY_TYPES:
        out["type"] = LEGACY_TYPES[rule]
    expression = out.get("expression")
    if expression is None or (isinstance(expression, str) and not expression.strip()):
        out.pop("expression", None)
    elif not out.get("type"):
        out["type"] = "on_success"  # beside an expression the rule is always spelled out
    return out


@functools.lru_cache(maxsize=1024)
def _status_calls(expression: str) -> frozenset[str]:
    prepared = _prepare(expression)
    if isinstance(prepared, _Problem):
        return frozenset()
    return frozenset(str(node.children[0]) for node in prepared.ast.iter_subtrees()
                     if node.data == "ident_arg" and str(node.children[0]) in STATUS_FUNCTIONS)


def uses_status_functions(expression: Any) -> frozenset[str]:
    """The status functions an expression calls (empty for none, or for one that does not compile)."""
    if not isinstance(expression, str) or _precheck(expression) is not None:
        return frozenset()
    try:
        return _status_calls(expression)
    except Exception:
        return frozenset()


def _rule_and_expression(conditions: Mapping) -> tuple[Any, str | None]:
    c = normalize_conditions(conditions)
    return c.get("type") or "on_success", c.get("expression")


def runs_on_cancel(conditions: Any) -> bool:
    """Whether a step may still run once its execution is cancelled: rule ``always``, or an
    expression that opted out of on_success with ``always()`` or ``cancelled()`` (the verdict,
    with ``cancelled()`` true, then decides)."""
    if not isinstance(conditions, Mapping):
        return False
    rule, expression = _rule_and_expression(conditions)
    if rule == "always":
        return True
    return rule == "on_success" and bool(uses_status_functions(expression) & {"always", "cancelled"})


def validate_conditions(conditions: dict | None) -> dict[str, str]:
    """Field -> message for a step's ``conditions``; {} when they are fine."""
    if conditions is None:
        return {}
    if not isinstance(conditions, Mapping):
        return {"conditions": "conditions must be an object with type, expression and depends_on"}
    errors: dict[str, str] = {}
    raw_rule = conditions.get("type") or "on_success"
    if not isinstance(raw_rule, str) or (raw_rule not in RULES and raw_rule not in LEGACY_TYPES):
        errors["type"] = f"unknown condition type {raw_rule!r}: use one of {', '.join(RULES)}"
    expression = conditions.get("expression")
    if raw_rule in LEGACY_TYPES and (expression is None
                                     or (isinstance(expression, str) and not expression.strip())):
        errors["expression"] = "an expression is required when type is 'expression'"
    elif expression is not None and not isinstance(expression, str):
        errors["expression"] = "expression must be a string"
    elif isinstance(expression, str) and expression.strip():
        problem = check_expression(expression)
        if problem is not None:
            errors["expression"] = problem.message
    depends_on = conditions.get("depends_on")
    if depends_on is not None:
        if not isinstance(depends_on, (list, tuple)) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in depends_on):
            errors["depends_on"] = "depends_on must be a list of step ids (integers)"
        elif len(depends_on) > MAX_DEPENDS_ON:
            errors["depends_on"] = f"depends_on may list at most {MAX_DEPENDS_ON} steps"
    return errors


def _list(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _describe_deps(deps: dict[str, str], names: list[str]) -> str:
    by_outcome: dict[str, list[str]] = {}
    for name in names:
        by_outcome.setdefault(deps[name], []).append(name)
    return "; ".join(f"{_list(ns)} {_OUTCOME_WORDS[o]}" for o, ns in by_outcome.items())


def evaluate_rule(conditions: dict | None, dep_outcomes: dict[str, str], context: dict,
                  cancelled: bool = False) -> Verdict:
    """Whether a step whose dependencies are all terminal runs: the rule AND the expression
    (see the module doc). ``cancelled``: cancel of the execution was requested. Never raises."""
    try:
        return _evaluate(conditions, dep_outcomes, context, cancelled)
    except Exception as ex:  # defensive: the planner must always get a Verdict
        return _error(f"Condition could not be evaluated: {_short(str(ex), 200)}")


def _outcomes(dep_outcomes: Any) -> dict[str, str] | Verdict:
    deps: dict[str, str] = {}
    for name, outcome in dict(dep_outcomes or {}).items():
        outcome = "failed" if outcome == "timed_out" else outcome
        if outcome not in OUTCOMES:
            return _error(f"unknown outcome {outcome!r} of dependency {name}:"
                          f" expected one of {', '.join(OUTCOMES)}")
        deps[str(name)] = outcome
    return deps


_NEEDS_SUCCESS = frozenset({"on_success", "one_success", "none_failed"})


def _evaluate(conditions: Any, dep_outcomes: Any, context: Any, cancelled: bool) -> Verdict:
    if conditions is not None and not isinstance(conditions, Mapping):
        return _error("conditions must be an object with type, expression and depends_on")
    rule, expression = _rule_and_expression(conditions or {})
    if rule not in RULES:
        return _error(f"unknown condition type {rule!r}: use one of {', '.join(RULES)}")
    deps = _outcomes(dep_outcomes)
    if isinstance(deps, Verdict):
        return deps
    any_failed = any(o in _FAILED for o in deps.values())
    if expression is None:
        v = _rule_verdict(rule, deps)
        return _with_uf(v, not v.result and rule in _NEEDS_SUCCESS and any_failed)

    success = _rule_verdict("on_success", deps).result and not cancelled
    status = {"always": True, "success": bool(success), "failure": any_failed, "cancelled": cancelled}
    if rule == "on_success" and uses_status_functions(expression):
        v = evaluate_expression(expression, context, status)
        if v.error is not None:
            return v
        word = "runs" if v.result else "skipped"
        calls = ", ".join(f"{f}()" for f in sorted(uses_status_functions(expression)))
        return _with_uf(Verdict(v.result, None, f"{word}: expression (with {calls} in place of rule"
                                f" on_success) is {v.explanation}"), not v.result and any_failed)

    rv = _rule_verdict(rule, deps)
    if not rv.result:
        return _with_uf(Verdict(False, None, rv.explanation + "; the expression was not evaluated"),
                        rule in _NEEDS_SUCCESS and any_failed)
    v = evaluate_expression(expression, context, status)
    if v.error is not None:
        return v
    held = rv.explanation.removeprefix("runs: ")
    if v.result:
        return Verdict(True, None, f"runs: {held}, and the expression is {v.explanation}")
    return Verdict(False, None, f"skipped: expression is {v.explanation} (the rule held: {held})")


def _with_uf(v: Verdict, upstream_failed: bool) -> Verdict:
    if not upstream_failed or v.result:
        return v
    return Verdict(v.result, v.error, v.explanation, v.position, True)


def _rule_verdict(rule: str, deps: dict[str, str]) -> Verdict:
    if rule == "always":
        return Verdict(True, None, "runs: rule always")
    names = list(deps)
    failed = [n for n in names if deps[n] in _FAILED]
    ok = [n for n in names if deps[n] in ("success", "skipped")]
    succeeded = [n for n in names if deps[n] == "success"]
    plural = lambda ns: "dependency" if len(ns) == 1 else "dependencies"  # noqa: E731

    if rule == "on_success":
        if not names:
            return Verdict(True, None, "runs: rule on_success (no dependencies)")
        bad = [n for n in names if n not in ok]
        if not bad:
            return Verdict(True, None, "runs: rule on_success, every dependency succeeded or was"
                           f" skipped ({_describe_deps(deps, names)})")
        return Verdict(False, None, f"skipped: {plural(bad)} {_describe_deps(deps, bad)} (rule on_success"
                       " needs every dependency to succeed or be skipped)")
    if rule == "on_failure":
        if failed:
            return Verdict(True, None, f"runs: {plural(failed)} {_describe_deps(deps, failed)}"
                           " (rule on_failure)")
        if not names:
            return Verdict(False, None, "skipped: rule on_failure runs only when a dependency fails,"
                           " and the step has none")
        return Verdict(False, None, "skipped: no dependency failed (rule on_failure runs only when"
                       f" a dependency fails): {_describe_deps(deps, names)}")
    if rule == "one_success":
        if succeeded:
            return Verdict(True, None, f"runs: {plural(succeeded)} {_describe_deps(deps, succeeded)}"
                           " (rule one_success)")
        if not names:
            return Verdict(False, None, "skipped: rule one_success needs a dependency to succeed,"
                           " and the step has none")
        return Verdict(False, None, "skipped: no dependency succeeded (rule one_success needs at"
                       f" least one): {_describe_deps(deps, names)}")
    # none_failed
    if failed:
        return Verdict(False, None, f"skipped: {plural(failed)} {_describe_deps(deps, failed)}"
                       " (rule none_failed needs no dependency to fail)")
    if not names:
        return Verdict(True, None, "runs: rule none_failed (no dependencies)")
    return Verdict(True, None, f"runs: rule none_failed, no dependency failed ({_describe_deps(deps, names)})")
