#!/usr/bin/env python3
"""Inject one small bug into a Python repository: the mutation side of `swe-env mine mutate`.

Stdlib only; runs unchanged on Python 3.6 ... 3.12 (it is piped into task containers, whose Python varies).
Candidates are found on the token stream (the same on every version; an f-string's inside is never touched),
edited into the SOURCE TEXT (formatting elsewhere is byte-for-byte kept), and each one is then checked: the edited
text must parse, the only difference between the old and new syntax trees must be the one the operator means to
make (so a token that is not what it looks like, such as the `in` of a `for`, is dropped), it must lie in the body
of a function, and the whole mutated file must `compile()`.

Usage (JSON on stdout; exit 1 with {"error": ...} on a bad request; `python3 - list ...` with this script on stdin
works the same, which is how it reaches a container):
  mutate.py list  --root DIR [--files a.py,b.py] [--operators id,id] [--max-per-function N] [--max-per-file N]
                  [--seed S]
      -> {"mutants": [{"id", "file", "function", "line", "col", "operator", "before", "after"}, ...],
          "skipped": [{"file", "reason"}, ...]}
  mutate.py apply --root DIR --id ID
      -> {"file", "diff"}: the file is rewritten (atomically, mode kept); `diff` is a git-style unified diff
         (a/ b/ paths relative to DIR) that REVERTS the mutant, i.e. the new task's gold patch.

Operators (id: what it does):
  cmp_flip       comparison flip: < <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in
  boundary_inc   integer constant n -> n+1 where it bounds something: an operand of a comparison, an argument of
                 range(...), a slice bound (x[:n], x[-n:]), also as a term of a + or - there (i < n - 1,
                 x[:len(x) - 1], range(n + 1))
  boundary_dec   the same, n -> n-1 (n > 0)
  negate_cond    if c: / elif c: / while c:  ->  if not (c):
  remove_stmt    an expression statement or an assignment (=, +=, x: T = v) -> pass, when it is not the only
                 statement of its block (docstrings and other bare constants are left alone)
  remove_return  return x -> return (not for `return None`)
  swap_args      the first two positional arguments of a call swapped, when they differ (no *args, no keywords)
  const_flip     True <-> False, 0 <-> 1, "" -> "x" ('' -> 'x')
  arith_flip     binary + <-> -, * <-> /, // -> /, and the augmented forms += <-> -=, *= <-> /=, //= -> /=
                 (unary signs, %, ** and @ are not touched)
  bool_flip      and <-> or
Only code in a function's body is mutated (not module or class level code, defaults or decorators); `function` is
the dotted name (Class.method, outer.inner). `line` is 1-based, `col` 0-based in characters, both of the token
that anchors the edit (the operator, the constant, the `if`, the statement's first token, the call's `(`).
`before`/`after` are the whole source lines the edit touches, before and after it.

Mutant ids are FILE:LINE:COL:OPERATOR and do not depend on the caps or the seed: `apply` finds the mutant again
from the file alone. The list is ordered by file, line, col, then operator (in the order above); two mutants of
one file that give the same source are one (the first is kept). Caps: --max-per-function N keeps N mutants of each
function, --max-per-file N keeps N of each file, taken round-robin across its functions (0 = no cap, the
default); which ones are kept is a pure function of --seed (a hash, not `random`, so every Python agrees).

Files: every *.py under DIR (sorted), or --files (paths relative to DIR). Never mutated: test files (test_*.py,
*_test.py, conftest.py, anything under a tests/, test/ or testing/ directory), hidden directories, __pycache__,
site-packages, virtualenvs (a directory with pyvenv.cfg), symbolic links, files over 1 MB, files that are not UTF-8
(or ASCII) and files that do not parse under the running Python (those are reported in "skipped").
"""

from __future__ import print_function

import ast
import bisect
import difflib
import hashlib
import io
import json
import keyword
import os
import re
import sys
import tempfile
import tokenize
import warnings

OPERATORS = [
    "cmp_flip",
    "boundary_inc",
    "boundary_dec",
    "negate_cond",
    "remove_stmt",
    "remove_return",
    "swap_args",
    "const_flip",
    "arith_flip",
    "bool_flip",
]
OP_ORDER = dict((name, i) for i, name in enumerate(OPERATORS))

CMP_TOKENS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}
CMP_NODES = {
    "<": ("Lt", "LtE"), "<=": ("LtE", "Lt"), ">": ("Gt", "GtE"), ">=": ("GtE", "Gt"),
    "==": ("Eq", "NotEq"), "!=": ("NotEq", "Eq"),
}
ARITH_TOKENS = {
    "+": "-", "-": "+", "*": "/", "/": "*", "//": "/",
    "+=": "-=", "-=": "+=", "*=": "/=", "/=": "*=", "//=": "/=",
}
ARITH_NODES = {"+": "Add", "-": "Sub", "*": "Mult", "/": "Div", "//": "FloorDiv"}
INT_RE = re.compile(r"^(0|[1-9][0-9]*)$")
COMPOUND = frozenset(["if", "elif", "else", "while", "for", "try", "except", "finally", "with", "def", "class",
                      "async"])
STMT_KEYWORDS = frozenset(["pass", "break", "continue", "raise", "global", "nonlocal", "import", "from", "del",
                           "assert", "return"])
SKIP_DIRS = frozenset(["tests", "test", "testing", "__pycache__", "node_modules", "site-packages", "dist-packages"])
STMT_LISTS = frozenset(["body", "orelse", "finalbody"])
MAX_BYTES = 1000000  # generated modules (parser tables, vendored bundles) are not worth the time
CONST_NAMES = frozenset(["Constant", "Num", "Str", "NameConstant", "Bytes"])


class Failure(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Files


def is_test_path(rel):
    parts = rel.split("/")
    base = parts[-1]
    if base.startswith("test_") or base.endswith("_test.py") or base == "conftest.py":
        return True
    return any(p in SKIP_DIRS or p.startswith(".") for p in parts[:-1])


def walk_files(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for d in sorted(dirnames):
            if d in SKIP_DIRS or d.startswith("."):
                continue
            if os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg")):
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.endswith(".py") and not os.path.islink(os.path.join(dirpath, f)):
                rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                if not is_test_path(rel):
                    out.append(rel)
    return sorted(out)


def read_source(path):
    """(raw bytes, text without BOM, bom flag) or a Failure naming why the file is not taken."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        enc = tokenize.detect_encoding(io.BytesIO(raw).readline)[0]
    except SyntaxError as e:
        raise Failure("encoding: %s" % e)
    if enc not in ("utf-8", "utf-8-sig"):
        try:
            raw.decode("ascii")
        except UnicodeDecodeError:
            raise Failure("not UTF-8 (%s)" % enc)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Failure("not valid UTF-8")
    bom = text.startswith(u"\ufeff")
    if bom:
        text = text[1:]
    return raw, text, bom


def encode(text, bom):
    return ((u"\ufeff" if bom else u"") + text).encode("utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Syntax trees (version-neutral helpers)


def quiet_parse(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(text)


def quiet_compile(tree_or_text, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile(tree_or_text, name, "exec")


def node_name(n):
    return type(n).__name__


def const_of(n):
    """(True, value) for a literal constant node on any version, else (False, None)."""
    name = node_name(n)
    if name not in CONST_NAMES:
        return False, None
    if name == "Num":
        return True, n.n
    if name in ("Str", "Bytes"):
        return True, n.s
    return True, n.value


def equal(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, ast.AST):
        for f in a._fields:
            if not equal(getattr(a, f, None), getattr(b, f, None)):
                return False
        return True
    if isinstance(a, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def find_diff(o, m):
    """The deepest pair of nodes holding every difference between two trees, and the path of (old parent, new
    parent, field, index) that leads to it; None when the trees are equal."""
    path = []
    while True:
        if type(o) is not type(m) or not isinstance(o, ast.AST):
            return o, m, path
        diffs = []
        for f in o._fields:
            ov, mv = getattr(o, f, None), getattr(m, f, None)
            if isinstance(ov, list) and isinstance(mv, list) and len(ov) == len(mv):
                for i, (a, b) in enumerate(zip(ov, mv)):
                    if not equal(a, b):
                        diffs.append((f, i, a, b))
            elif not equal(ov, mv):
                diffs.append((f, None, ov, mv))
        if not diffs:
            return None if not path else (o, m, path)
        if len(diffs) == 1 and isinstance(diffs[0][2], ast.AST) and isinstance(diffs[0][3], ast.AST):
            f, i, a, b = diffs[0]
            path.append((o, m, f, i))
            o, m = a, b
            continue
        return o, m, path


def function_of(path):
    """Dotted name of the function whose body holds the change, or None outside any function body."""
    names, in_function = [], False
    for parent, _m, field, _i in path:
        kind = node_name(parent)
        if field == "body" and kind in ("FunctionDef", "AsyncFunctionDef"):
            names.append(parent.name)
            in_function = True
        elif field == "body" and kind == "ClassDef":
            names.append(parent.name)
    return ".".join(names) if in_function else None


def is_int(v):
    return type(v) is int


# Checks: each gets (old node, new node, path, candidate) at the deepest difference and says whether the change
# is exactly the one the operator means.


def check_cmp(o, m, path, cand):
    return (bool(path) and node_name(path[-1][0]) == "Compare" and path[-1][2] == "ops"
            and (node_name(o), node_name(m)) == cand["nodes"])


def check_boundary(o, m, path, cand):
    ok_o, vo = const_of(o)
    ok_m, vm = const_of(m)
    if not (ok_o and ok_m and is_int(vo) and is_int(vm) and vm == vo + cand["delta"]):
        return False
    k = len(path) - 1
    while k >= 0 and (node_name(path[k][0]) == "UnaryOp" and node_name(path[k][0].op) == "USub"
                      or node_name(path[k][0]) == "BinOp" and node_name(path[k][0].op) in ("Add", "Sub")):
        k -= 1  # -n, len(x) - n, i + n: still the bound
    if k < 0:
        return False
    parent, _m, field, _i = path[k]
    kind = node_name(parent)
    if kind == "Compare":
        return field in ("left", "comparators")
    if kind == "Slice":
        return field in ("lower", "upper", "step")
    if kind == "Call":
        return field == "args" and node_name(parent.func) == "Name" and parent.func.id == "range"
    return False


def check_negate(o, m, path, cand):
    for parent, mparent, field, _i in path:
        if field == "test" and node_name(parent) in ("If", "While"):
            new = mparent.test
            return (node_name(new) == "UnaryOp" and node_name(new.op) == "Not"
                    and equal(new.operand, parent.test))
    return False


def check_remove_stmt(o, m, path, cand):
    if node_name(m) != "Pass" or not path:
        return False
    parent, _m, field, _i = path[-1]
    if field not in STMT_LISTS or len(getattr(parent, field)) < 2:
        return False
    kind = node_name(o)
    if kind == "Expr":
        return not const_of(o.value)[0] and node_name(o.value) != "Ellipsis"
    if kind == "AnnAssign":
        return o.value is not None
    return kind in ("Assign", "AugAssign")


def check_remove_return(o, m, path, cand):
    if node_name(o) != "Return" or node_name(m) != "Return" or o.value is None or m.value is not None:
        return False
    ok, v = const_of(o.value)
    return not (ok and v is None)


def check_swap(o, m, path, cand):
    if node_name(o) != "Call" or node_name(m) != "Call" or len(o.args) < 2 or len(o.args) != len(m.args):
        return False
    if any(node_name(a) == "Starred" for a in o.args[:2]):
        return False
    return (equal(o.func, m.func) and equal(o.keywords, m.keywords) and equal(o.args[2:], m.args[2:])
            and equal(o.args[0], m.args[1]) and equal(o.args[1], m.args[0]) and not equal(o.args[0], o.args[1]))


def check_const(o, m, path, cand):
    ok_o, vo = const_of(o)
    ok_m, vm = const_of(m)
    if not (ok_o and ok_m):
        return False
    if path and node_name(path[-1][0]) == "Expr":
        return False
    want_o, want_m = cand["values"]
    return type(vo) is type(want_o) and vo == want_o and type(vm) is type(want_m) and vm == want_m


def check_arith(o, m, path, cand):
    return (bool(path) and node_name(path[-1][0]) in ("BinOp", "AugAssign") and path[-1][2] == "op"
            and (node_name(o), node_name(m)) == cand["nodes"])


def check_bool(o, m, path, cand):
    if node_name(o) == "BoolOp" and node_name(m) == "BoolOp":
        return True
    return (bool(path) and node_name(path[-1][0]) == "BoolOp"
            and (node_name(o), node_name(m)) in (("And", "Or"), ("Or", "And")))


CHECKS = {
    "cmp_flip": check_cmp,
    "boundary_inc": check_boundary,
    "boundary_dec": check_boundary,
    "negate_cond": check_negate,
    "remove_stmt": check_remove_stmt,
    "remove_return": check_remove_return,
    "swap_args": check_swap,
    "const_flip": check_const,
    "arith_flip": check_arith,
    "bool_flip": check_bool,
}


# ----------------------------------------------------------------------------------------------------------------
# Tokens and candidates


class Source(object):
    """One file: its text, line offsets, significant tokens and logical lines."""

    def __init__(self, rel, raw, text, bom):
        self.rel, self.raw, self.text, self.bom = rel, raw, text, bom
        self.line_starts = [0]
        for line in io.StringIO(text, newline="").readlines():
            self.line_starts.append(self.line_starts[-1] + len(line))
        fstart = getattr(tokenize, "FSTRING_START", None)
        fend = getattr(tokenize, "FSTRING_END", None)
        skip_types = set([tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER, getattr(tokenize, "ENCODING", -1)])
        self.lines = []  # logical lines: lists of significant tokens
        current, fdepth, fpos = [], 0, None
        try:
            for tok in tokenize.generate_tokens(io.StringIO(text, newline="").readline):
                if fstart is not None and tok.type == fstart:
                    if fdepth == 0:
                        fpos = tok.start
                    fdepth += 1
                    continue
                if fend is not None and tok.type == fend:
                    fdepth -= 1
                    if fdepth == 0:  # the whole f-string stands as one opaque string token, as before 3.12
                        current.append(tokenize.TokenInfo(tokenize.STRING, "f<>", fpos, tok.end, tok.line))
                    continue
                if fdepth or tok.type in skip_types:
                    continue
                if tok.type == tokenize.NEWLINE:
                    if current:
                        self.lines.append(current)
                    current = []
                    continue
                current.append(tok)
        except (tokenize.TokenError, SyntaxError, IndentationError) as e:
            raise Failure("tokenize: %s" % (e,))
        if current:
            self.lines.append(current)

    def offset(self, pos):
        row, col = pos
        return self.line_starts[row - 1] + col

    def function_spans(self):
        """(start, end, col, name) of every outermost function (one not inside another function), decorators
        included, by its logical lines: it ends where a line starts at or left of its `def`."""
        spans, cur, pending = [], None, None
        for line in self.lines:
            first = line[0]
            col = first.start[1]
            if cur is not None:
                if col > cur[2]:
                    continue
                spans.append((cur[0], self.line_starts[first.start[0] - 1], cur[2], cur[3]))
                cur = None
            if first.string == "@":
                if pending is None:
                    pending = self.line_starts[first.start[0] - 1]
                continue
            k = 1 if first.string == "async" else 0
            if len(line) > k + 1 and line[k].string == "def":
                start = pending if pending is not None else self.line_starts[first.start[0] - 1]
                cur = (start, None, col, line[k + 1].string)
            pending = None
        if cur is not None:
            spans.append((cur[0], len(self.text), cur[2], cur[3]))
        return spans


def outer_functions(tree):
    """Dotted names (classes + the function) of the outermost functions, in source order."""
    out = []

    def visit(stmts, classes):
        for st in stmts:
            kind = node_name(st)
            if kind in ("FunctionDef", "AsyncFunctionDef"):
                out.append(classes + [st.name])
                continue
            inner = classes + [st.name] if kind == "ClassDef" else classes
            for f in st._fields:
                v = getattr(st, f, None)
                if not isinstance(v, list) or not v:
                    continue
                if isinstance(v[0], ast.stmt):
                    visit(v, inner)
                else:
                    for item in v:
                        if isinstance(getattr(item, "body", None), list):
                            visit(item.body, inner)

    visit(tree.body, [])
    return out


def is_op(tok, s):
    return tok.type == tokenize.OP and tok.string == s


def header_colon(line, first):
    """Index in `line` of the colon that ends a compound statement's header, from token index `first` on."""
    depth, lambdas = 0, 0
    for i in range(first, len(line)):
        t = line[i]
        if t.type == tokenize.OP:
            if t.string in "([{":
                depth += 1
            elif t.string in ")]}":
                depth -= 1
            elif t.string == ":" and depth == 0:
                if lambdas:
                    lambdas -= 1
                else:
                    return i
        elif t.type == tokenize.NAME and t.string == "lambda" and depth == 0:
            lambdas += 1
    return None


def split_simple(line, start):
    """Token index ranges [a, b) of the simple statements in line[start:], split on top-level `;`."""
    out, depth, a = [], 0, start
    for i in range(start, len(line)):
        t = line[i]
        if t.type == tokenize.OP:
            if t.string in "([{":
                depth += 1
            elif t.string in ")]}":
                depth -= 1
            elif t.string == ";" and depth == 0:
                if i > a:
                    out.append((a, i))
                a = i + 1
    if len(line) > a:
        out.append((a, len(line)))
    return out


def call_args(toks, i):
    """Top-level argument token ranges of the call whose `(` is toks[i], or None if it cannot be read."""
    depth, args, a, has_eq = 0, [], i + 1, False
    for j in range(i + 1, len(toks)):
        t = toks[j]
        if t.type == tokenize.OP:
            if t.string in "([{":
                depth += 1
            elif t.string in ")]}":
                if depth == 0:
                    if j > a:
                        args.append((a, j, has_eq))
                    return args
                depth -= 1
            elif t.string == "," and depth == 0:
                args.append((a, j, has_eq))
                a, has_eq = j + 1, False
            elif t.string == "=" and depth == 0:
                has_eq = True
    return None


def candidates(src):
    """Every candidate edit of a file (cheap: tokens only). Each: dict(op, pos, start, end, repl, + check data)."""
    out = []

    def add(op, tok, start_tok, end_tok, repl, **extra):
        c = dict(op=op, pos=tok.start, start=src.offset(start_tok.start), end=src.offset(end_tok.end), repl=repl)
        c.update(extra)
        out.append(c)

    for line in src.lines:
        n = len(line)
        for i, t in enumerate(line):
            prev = line[i - 1] if i > 0 else None
            nxt = line[i + 1] if i + 1 < n else None
            if t.type == tokenize.OP:
                if t.string in CMP_TOKENS:
                    add("cmp_flip", t, t, t, CMP_TOKENS[t.string], nodes=CMP_NODES[t.string])
                if t.string in ARITH_TOKENS:
                    a = t.string.rstrip("=")
                    b = ARITH_TOKENS[t.string].rstrip("=")
                    add("arith_flip", t, t, t, ARITH_TOKENS[t.string], nodes=(ARITH_NODES[a], ARITH_NODES[b]))
                if t.string == "(" and prev is not None and (
                        (prev.type == tokenize.NAME and not keyword.iskeyword(prev.string))
                        or is_op(prev, ")") or is_op(prev, "]")):
                    args = call_args(line, i)
                    if args and len(args) >= 2:
                        (a1, b1, eq1), (a2, b2, eq2) = args[0], args[1]
                        if not (eq1 or eq2) and b1 > a1 and b2 > a2 and \
                                line[a1].string not in ("*", "**") and line[a2].string not in ("*", "**"):
                            s1, e1 = src.offset(line[a1].start), src.offset(line[b1 - 1].end)
                            s2, e2 = src.offset(line[a2].start), src.offset(line[b2 - 1].end)
                            text1, text2 = src.text[s1:e1], src.text[s2:e2]
                            if text1 != text2:
                                add("swap_args", t, line[a1], line[b2 - 1], text2 + src.text[e1:s2] + text1)
            elif t.type == tokenize.NAME:
                s = t.string
                if s == "is":
                    if nxt is not None and nxt.string == "not":
                        add("cmp_flip", t, t, nxt, "is", nodes=("IsNot", "Is"))
                    else:
                        add("cmp_flip", t, t, t, "is not", nodes=("Is", "IsNot"))
                elif s == "in":
                    if prev is not None and prev.string == "not":
                        add("cmp_flip", prev, prev, t, "in", nodes=("NotIn", "In"))
                    else:
                        add("cmp_flip", t, t, t, "not in", nodes=("In", "NotIn"))
                elif s in ("True", "False"):
                    other = "False" if s == "True" else "True"
                    add("const_flip", t, t, t, other, values=(s == "True", s != "True"))
                elif s in ("and", "or"):
                    add("bool_flip", t, t, t, "or" if s == "and" else "and")
            elif t.type == tokenize.NUMBER and INT_RE.match(t.string):
                v = int(t.string)
                add("boundary_inc", t, t, t, str(v + 1), delta=1)
                if v > 0:
                    add("boundary_dec", t, t, t, str(v - 1), delta=-1)
                if v in (0, 1):
                    add("const_flip", t, t, t, str(1 - v), values=(v, 1 - v))
            elif t.type == tokenize.STRING and t.string in ('""', "''"):
                q = t.string[0]
                add("const_flip", t, t, t, q + "x" + q, values=(u"", u"x"))

        # Statements on this logical line.
        first = line[0]
        body_from = 0
        if first.string in ("if", "elif", "while"):
            colon = header_colon(line, 1)
            if colon is not None and colon > 1:
                a, b = line[1], line[colon - 1]
                cond = src.text[src.offset(a.start):src.offset(b.end)]
                add("negate_cond", first, a, b, "not (" + cond + ")")
            body_from = None if colon is None else colon + 1
        elif first.string in COMPOUND:
            colon = header_colon(line, 1)
            body_from = None if colon is None else colon + 1
        elif first.string == "@":
            body_from = None
        if body_from is None:
            continue
        for a, b in split_simple(line, body_from):
            head = line[a]
            if head.string == "return":
                if b - a > 1:
                    add("remove_return", head, head, line[b - 1], "return")
            elif head.string not in STMT_KEYWORDS and head.string not in COMPOUND:
                add("remove_stmt", head, head, line[b - 1], "pass")

    out.sort(key=lambda c: (c["pos"], OP_ORDER[c["op"]]))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Verification


class Analysis(object):
    def __init__(self, root, rel):
        path = os.path.join(root, rel)
        if os.path.islink(path):
            raise Failure("a symbolic link")
        if not os.path.isfile(path):
            raise Failure("no such file")
        if os.path.getsize(path) > MAX_BYTES:
            raise Failure("larger than %d bytes" % MAX_BYTES)
        raw, text, bom = read_source(path)
        try:
            tree = quiet_parse(text)
            quiet_compile(tree, rel)
        except (SyntaxError, ValueError, TypeError) as e:
            raise Failure("does not parse: %s" % (e,))
        self.src = Source(rel, raw, text, bom)
        if encode(text, bom) != raw:
            raise Failure("text does not round-trip to the same bytes")
        # Each outermost function is checked on its own: a mutant is parsed and compared as its function (under an
        # `if 1:` when indented), not as the whole file. When tokens and tree disagree, the whole file is the unit.
        units = []
        spans, names = self.src.function_spans(), outer_functions(tree)
        if len(spans) == len(names) and all(sp[3] == nm[-1] for sp, nm in zip(spans, names)):
            try:
                for (start, end, col, _n), nm in zip(spans, names):
                    prefix = "if 1:\n" if col else ""
                    units.append((start, end, prefix, nm[:-1], quiet_parse(prefix + text[start:end])))
            except (SyntaxError, ValueError, TypeError):
                units = []
        if not units:
            units = [(0, len(text), "", [], tree)]
        self.units = units

    def mutated_text(self, cand):
        t = self.src.text
        return t[:cand["start"]] + cand["repl"] + t[cand["end"]:]

    def verify(self, cand):
        """The function the candidate lands in if it is a real mutant of its kind, else None (the whole file is
        compiled later, for the mutants kept)."""
        for start, end, prefix, classes, tree in self.units:
            if start <= cand["start"] and cand["end"] <= end:
                break
        else:
            return None
        hi = end + len(cand["repl"]) - (cand["end"] - cand["start"])
        unit = prefix + self.mutated_text(cand)[start:hi]
        try:
            new = quiet_parse(unit)
            quiet_compile(new, self.src.rel)
        except (SyntaxError, ValueError, TypeError):
            return None
        found = find_diff(tree, new)
        if found is None:
            return None
        o, m, path = found
        func = function_of(path)
        if func is None or not CHECKS[cand["op"]](o, m, path, cand):
            return None
        return ".".join(classes + [func])

    def compiles(self, text):
        try:
            quiet_compile(text, self.src.rel)
            return True
        except (SyntaxError, ValueError, TypeError):
            return False

    def record(self, cand, func):
        text, new = self.src.text, self.mutated_text(cand)
        row = cand["pos"][0]
        start_row = bisect.bisect_right(self.src.line_starts, cand["start"])
        end_row = bisect.bisect_right(self.src.line_starts, max(cand["start"], cand["end"] - 1))
        a = self.src.line_starts[start_row - 1]
        before_end = self.src.line_starts[end_row] if end_row < len(self.src.line_starts) else len(text)
        after_end = new.find("\n", cand["start"] + len(cand["repl"]))
        after_end = len(new) if after_end < 0 else after_end
        return {
            "id": "%s:%d:%d:%s" % (self.src.rel, row, cand["pos"][1], cand["op"]),
            "file": self.src.rel,
            "function": func,
            "line": row,
            "col": cand["pos"][1],
            "operator": cand["op"],
            "before": text[a:before_end].rstrip("\r\n"),
            "after": new[a:after_end].rstrip("\r\n"),
        }


def rank(seed, key):
    return hashlib.sha256(("%s\0%s" % (seed, key)).encode("utf-8")).hexdigest()


def apply_caps(muts, per_function, per_file, seed):
    """Cap per function, then per file (round-robin over its functions); selection by a seeded hash."""
    groups = {}
    for i, mu in enumerate(muts):
        groups.setdefault(mu["function"], []).append((rank(seed, mu["id"]), i))
    for g in groups.values():
        g.sort()
        if per_function:
            del g[per_function:]
    order = []
    names = sorted(groups, key=lambda f: rank(seed, "function\0" + f))
    depth = 0
    while True:
        took = False
        for f in names:
            if depth < len(groups[f]):
                order.append(groups[f][depth][1])
                took = True
        if not took:
            break
        depth += 1
    if per_file:
        order = order[:per_file]
    return sorted(order)


def list_file(root, rel, ops, per_function, per_file, seed):
    an = Analysis(root, rel)
    seen, muts, texts = set(), [], []
    for cand in candidates(an.src):
        if cand["op"] not in ops:
            continue
        new = an.mutated_text(cand)
        digest = hashlib.sha256(new.encode("utf-8")).hexdigest()
        if digest in seen:
            continue
        func = an.verify(cand)
        if func is None:
            continue
        seen.add(digest)
        muts.append(an.record(cand, func))
        texts.append(new)
    while True:
        keep = apply_caps(muts, per_function, per_file, seed)
        bad = [i for i in keep if not an.compiles(texts[i])]
        if not bad:
            return [muts[i] for i in keep]
        for i in sorted(bad, reverse=True):
            del muts[i]
            del texts[i]


# ----------------------------------------------------------------------------------------------------------------
# apply


def git_diff(rel, old, new):
    """A git-style unified diff from `old` to `new` (text), exact about a missing newline at the end."""
    def lines(s):
        return re.findall(r"[^\n]*\n|[^\n]+$", s)
    body = []
    for line in difflib.unified_diff(lines(old), lines(new), "a/" + rel, "b/" + rel, n=3):
        if line.startswith("---") or line.startswith("+++"):
            body.append(line.rstrip("\n") + "\n")
        elif line.endswith("\n"):
            body.append(line)
        else:
            body.append(line + "\n\\ No newline at end of file\n")
    return "diff --git a/%s b/%s\n" % (rel, rel) + "".join(body)


def write_atomic(path, data):
    st = os.stat(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".mutate", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except (OSError, AttributeError):
            pass
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def apply_mutant(root, mid):
    parts = mid.rsplit(":", 3)
    if len(parts) != 4 or parts[3] not in OP_ORDER:
        raise Failure("malformed id %r (FILE:LINE:COL:OPERATOR)" % mid)
    rel, op = parts[0], parts[3]
    try:
        pos = (int(parts[1]), int(parts[2]))
    except ValueError:
        raise Failure("malformed id %r (FILE:LINE:COL:OPERATOR)" % mid)
    if is_test_path(rel):
        raise Failure("%s is a test file" % rel)
    an = Analysis(root, rel)
    for cand in candidates(an.src):
        if cand["op"] != op or cand["pos"] != pos:
            continue
        if an.verify(cand) is None:
            break
        new = an.mutated_text(cand)
        if not an.compiles(new):
            break
        write_atomic(os.path.join(root, rel), encode(new, an.src.bom))
        old_full = (u"\ufeff" if an.src.bom else u"") + an.src.text
        new_full = (u"\ufeff" if an.src.bom else u"") + new
        return {"file": rel, "diff": git_diff(rel, new_full, old_full)}
    raise Failure("no mutant %s" % mid)


# ----------------------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv):
    if not argv or argv[0] not in ("list", "apply"):
        raise Failure("usage: mutate.py list|apply --root DIR ...")
    opts = {"cmd": argv[0], "root": None, "files": None, "operators": None, "max-per-function": "0",
            "max-per-file": "0", "seed": "0", "id": None}
    i = 1
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise Failure("unexpected argument %r" % a)
        key, val = a[2:], None
        if "=" in key:
            key, val = key.split("=", 1)
        if key not in opts or key == "cmd":
            raise Failure("unknown option --%s" % key)
        if val is None:
            if i + 1 >= len(argv):
                raise Failure("--%s needs a value" % key)
            val = argv[i + 1]
            i += 1
        opts[key] = val
        i += 1
    if not opts["root"] or not os.path.isdir(opts["root"]):
        raise Failure("--root must name a directory")
    for key in ("max-per-function", "max-per-file"):
        if not re.match(r"^[0-9]+$", opts[key]):
            raise Failure("--%s takes a count" % key)
        opts[key] = int(opts[key])
    return opts


def main(argv):
    try:
        opts = parse_args(argv)
        root = opts["root"]
        if opts["cmd"] == "apply":
            if not opts["id"]:
                raise Failure("apply needs --id")
            result = apply_mutant(root, opts["id"])
        else:
            ops = OPERATORS
            if opts["operators"]:
                ops = [o for o in opts["operators"].split(",") if o]
                unknown = [o for o in ops if o not in OP_ORDER]
                if unknown:
                    raise Failure("unknown operator(s): %s" % ", ".join(unknown))
            ops = frozenset(ops)
            if opts["files"] is not None:
                files = set()
                for f in opts["files"].split(","):
                    f = f.strip().replace(os.sep, "/")
                    while f.startswith("./"):
                        f = f[2:]
                    if f:
                        files.add(f)
                files = sorted(files)
            else:
                files = walk_files(root)
            mutants, skipped = [], []
            for rel in files:
                if is_test_path(rel):
                    skipped.append({"file": rel, "reason": "test file"})
                    continue
                try:
                    mutants.extend(list_file(root, rel, ops, opts["max-per-function"], opts["max-per-file"],
                                             opts["seed"]))
                except Failure as e:
                    skipped.append({"file": rel, "reason": str(e)})
            result = {"mutants": mutants, "skipped": skipped}
    except Failure as e:
        sys.stdout.write(json.dumps({"error": str(e)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
