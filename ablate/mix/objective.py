"""The objective of ``ablate mix propose``: a linear combination of metrics, parsed safely.

Syntax (a Python expression read with ``ast``, never evaluated): numbers, metric names, ``+``,
``-``, ``*``, unary minus and parentheses. Metric names hold ``/`` and ``.``, so they are written
quoted: ``2*'probes/accuracy/program_output' - 'bpb/math.text'``; a name that is a plain
identifier (``loss``) may go bare. A product needs a number on one side (the objective stays
linear, so its uncertainty is the weighted sum of the models' variances). The objective is
**maximised**: give lower-is-better metrics (bpb, loss) a minus sign.
"""

from __future__ import annotations

import ast

from ablate.errors import AblateError, show

WHERE = "--objective"


def _fail(expr: str, node, what: str):
    col = getattr(node, "col_offset", 0) + 1
    raise AblateError(f"{WHERE}: column {col} of {show(expr, 80)}: {what}")


def parse_objective(expr: str, metrics) -> tuple[dict, float]:
    """``({metric: coefficient}, constant)`` of ``expr`` over the known ``metrics``."""
    if not isinstance(expr, str) or not expr.strip():
        raise AblateError(f"{WHERE}: empty (give e.g. \"2*'probes/accuracy' - 'bpb/math.text'\")")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise AblateError(
            f"{WHERE}: column {exc.offset or 0} of {show(expr, 80)}: does not parse ({exc.msg}; "
            "quote metric names: 2*'probes/accuracy' - 'bpb/math.text')"
        ) from None
    known = list(metrics)
    expr = expr.strip()

    def walk(node) -> tuple[dict, float]:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                _fail(expr, node, f"{node.value!r} is not a number or a metric")
            if isinstance(node.value, (int, float)):
                return {}, float(node.value)
            if isinstance(node.value, str):
                return {metric(node.value, node): 1.0}, 0.0
            _fail(expr, node, f"{show(node.value)} is not a number or a metric")
        if isinstance(node, ast.Name):
            return {metric(node.id, node): 1.0}, 0.0
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            terms, c = walk(node.operand)
            s = -1.0 if isinstance(node.op, ast.USub) else 1.0
            return {k: s * v for k, v in terms.items()}, s * c
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            (lt, lc), (rt, rc) = walk(node.left), walk(node.right)
            s = 1.0 if isinstance(node.op, ast.Add) else -1.0
            out = dict(lt)
            for k, v in rt.items():
                out[k] = out.get(k, 0.0) + s * v
            return out, lc + s * rc
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            (lt, lc), (rt, rc) = walk(node.left), walk(node.right)
            if lt and rt:
                _fail(expr, node, "a product of two metrics (the objective must be linear)")
            terms, k = (rt, lc) if not lt else (lt, rc)
            return {m: k * v for m, v in terms.items()}, lc * rc
        what = type(node).__name__
        if isinstance(node, ast.BinOp):
            what = f"operator {type(node.op).__name__}"
        _fail(expr, node, f"{what} is not allowed (numbers, quoted metric names, + - * and ())")

    def metric(name: str, node) -> str:
        if name not in known:
            from ablate.mix.table import _closest_first, _listing

            _fail(
                expr,
                node,
                f"{name!r} is not a fitted metric (fitted: "
                f"{_listing(_closest_first(name, known))})",
            )
        return name

    terms, const = walk(tree.body)
    terms = {k: v for k, v in terms.items() if v != 0}
    if not terms:
        raise AblateError(f"{WHERE}: {show(expr, 80)} names no metric with a nonzero weight")
    return terms, const
