"""Read the authors' `anahv2_prompt.py` (open-compass/ANAH) as anah-v2 prompt templates.

The ANAH-v2 model answers best with the prompts it was trained on, which the authors publish
as three Python functions that build each turn's user message with an f-string:

    fact_check_prompt(question, annotation, language)                  -> turn 1 ("facts")
    reference_check_prompt(question, reference, annotation, language)  -> turn 2 ("reference")
    hallucination_check_prompt(question, reference, annotation, language) -> turn 3 ("judge")

Their own evaluation calls them positionally with (question, sentence), (question, document,
sentence) and (question, extracted reference, sentence), so the parameters are mapped by
position to our {question}, {sentence}, {document} and {reference}, whatever they are named.

The file is parsed with `ast`, never imported or executed: a prompt file is data, and
`annotate` should not run code from a file passed as an option. Each function may hold only
assignments of (f-)strings to names and a return of a name, a string, or
`A if language == "zh" else B` (also `!=`, and an `if language == ...: return` block); each
language's template is what the function would return for "zh" and for "en". Anything else
is refused with the line to look at, so a changed file is never half-understood.
"""

from __future__ import annotations

import ast
from pathlib import Path

from maskdpo_cli.errors import InputError, MaskDPOError

# Function -> (template key, our placeholder for each positional parameter but the last, language).
FUNCTIONS = {
    "fact_check_prompt": ("facts", ("question", "sentence")),
    "reference_check_prompt": ("reference", ("question", "document", "sentence")),
    "hallucination_check_prompt": ("judge", ("question", "reference", "sentence")),
}
LANGUAGES = ("en", "zh")


class _Unsupported(Exception):
    def __init__(self, node: ast.AST, what: str) -> None:
        super().__init__(what)
        self.line = getattr(node, "lineno", None)


def is_prompt_module(path: str | Path) -> bool:
    return Path(path).suffix == ".py"


def read_prompt_module(path: str | Path) -> dict[str, dict[str, str]]:
    """{"en": {"facts", "reference", "judge"}, "zh": {...}} rendered with our placeholders."""
    name = str(path)
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=name)
    except FileNotFoundError:
        raise MaskDPOError(f"--prompts {name}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable Python file ({err})", name) from None
    except SyntaxError as err:
        raise InputError(f"not valid Python ({err.msg})", name, err.lineno) from None
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    missing = [f for f in FUNCTIONS if f not in functions]
    if missing:
        raise InputError(f"no function {missing[0]}(); expected the three functions of the authors' "
                         f"anahv2_prompt.py: {', '.join(FUNCTIONS)}", name)
    prompts: dict[str, dict[str, str]] = {lang: {"system": ""} for lang in LANGUAGES}
    for function, (key, roles) in FUNCTIONS.items():
        node = functions[function]
        try:
            for lang in LANGUAGES:
                prompts[lang][key] = _render(node, roles, lang)
        except _Unsupported as err:
            raise InputError(f"{function}(): {err}; write the templates as JSON instead (see README)",
                             name, err.line or node.lineno) from None
    return prompts


def _render(function: ast.FunctionDef, roles: tuple[str, ...], language: str) -> str:
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    if len(params) != len(roles) + 1 or function.args.vararg or function.args.kwarg:
        raise _Unsupported(function, f"expected {len(roles) + 1} parameters "
                           f"({', '.join(roles)}, language), found {len(params)}")
    placeholders = dict(zip(params, roles))
    language_param = params[-1]
    names: dict[str, str] = {}
    for statement in function.body:
        result = _statement(statement, placeholders, language_param, language, names)
        if result is not None:
            return result
    raise _Unsupported(function, "no return statement")


def _statement(node: ast.stmt, placeholders: dict[str, str], language_param: str, language: str,
               names: dict[str, str]) -> str | None:
    """The returned template if `node` returns for this language, else None (after assignments)."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
        return None  # a docstring
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        names[node.targets[0].id] = _string(node.value, placeholders, names)
        return None
    if isinstance(node, ast.Return) and node.value is not None:
        return _expression(node.value, placeholders, language_param, language, names)
    if isinstance(node, ast.If):
        branch = node.body if _is_language(node.test, language_param, language) else node.orelse
        for statement in branch:
            result = _statement(statement, placeholders, language_param, language, names)
            if result is not None:
                return result
        return None
    raise _Unsupported(node, f"unsupported statement {type(node).__name__}")


def _expression(node: ast.expr, placeholders: dict[str, str], language_param: str, language: str,
                names: dict[str, str]) -> str:
    if isinstance(node, ast.IfExp):
        chosen = node.body if _is_language(node.test, language_param, language) else node.orelse
        return _expression(chosen, placeholders, language_param, language, names)
    return _string(node, placeholders, names)


def _is_language(test: ast.expr, language_param: str, language: str) -> bool:
    """Whether `language == "xx"` (or `!=`) holds for this language."""
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq))
            and isinstance(test.left, ast.Name) and test.left.id == language_param
            and isinstance(test.comparators[0], ast.Constant) and isinstance(test.comparators[0].value, str)):
        equal = language == test.comparators[0].value
        return equal if isinstance(test.ops[0], ast.Eq) else not equal
    raise _Unsupported(test, f"a condition other than `{language_param} == \"zh\"`")


def _string(node: ast.expr, placeholders: dict[str, str], names: dict[str, str]) -> str:
    """A string constant, an f-string over the parameters, or a name assigned one earlier."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif (isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name)
                  and value.value.id in placeholders and value.conversion == -1 and value.format_spec is None):
                parts.append("{" + placeholders[value.value.id] + "}")
            else:
                raise _Unsupported(value, "an f-string field other than a plain parameter")
        return "".join(parts)
    raise _Unsupported(node, f"unsupported expression {type(node).__name__}")


__all__ = ["read_prompt_module", "is_prompt_module", "FUNCTIONS"]
