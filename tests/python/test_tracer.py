"""Tests of orchestrator/src/trace/tracer.py, the stdlib-only tracer of `swe-env trace` (issue 16).

Stdlib only (unittest); every case writes a small program into a temporary directory and runs the tracer as a
subprocess under the interpreter running the tests (`python tracer.py entry --out F --root TMP --file prog.py
--entry EXPR`, or piped on stdin as swe-env does), then checks the exact records. tests/it/tracer_script.rs runs
this file under every Python 3.6 ... 3.12 found plus the system Python. Programs use only syntax Python 3.6 parses.
The pytest mode is tested here only when the interpreter can import pytest (pyenv interpreters have none); the
Docker tests (tests/it/trace.rs) cover it in the fixture images.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TRACER = os.path.normpath(os.path.join(HERE, "..", "..", "orchestrator", "src", "trace", "tracer.py"))
PY = sys.version_info[:2]

PROG = '''\
import functools


def deco(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


def fact(n):
    if n <= 1:
        return 1
    return n * fact(n - 1)


def gen(n):
    for i in range(n):
        yield i * 10


def use_gen():
    return list(gen(2))


def caught():
    try:
        raise ValueError("bad")
    except ValueError as e:
        msg = str(e)
    return msg


def boom(x):
    y = x + 1
    raise KeyError(y)


def uncaught():
    return boom(1)


def fin():
    try:
        boom(2)
    finally:
        z = 3


def call_fin():
    try:
        fin()
    except KeyError:
        return "ok"


class Shape(object):
    sides = 4

    def area(self, w):
        return w * w

    @classmethod
    def make(cls):
        return cls()

    @staticmethod
    @deco
    def double(v):
        return v * 2


def use_class():
    s = Shape.make()
    return s.area(3) + Shape.double(2)


def comp(xs):
    ys = [fact(x) for x in xs]
    total = sum(v for v in ys)
    return ys, total


def lam():
    f = lambda v: v + 1
    return f(1)


def outer():
    def inner(q):
        return q
    return inner(5)


def multi(a,
          b):
    c = (a +
         b)
    return c
'''


def run(source, entry, *extra, **kw):
    """Runs the tracer on `source` (written as prog.py in a fresh temp dir); returns (records, process)."""
    tmp = tempfile.mkdtemp(prefix="swe-env-tracer-")
    try:
        path = os.path.join(tmp, "prog.py")
        with open(path, "w") as handle:
            handle.write(source)
        out = os.path.join(tmp, "events.jsonl")
        args = ["entry", "--out", out, "--root", tmp, "--file", path, "--entry", entry] + list(extra)
        env = dict(os.environ)
        env.update(kw.get("env", {}))
        if kw.get("stdin"):
            with open(TRACER, "rb") as handle:
                script = handle.read()
            proc = subprocess.Popen([sys.executable, "-"] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=tmp, env=env)
            stdout, stderr = proc.communicate(script)
        else:
            proc = subprocess.Popen([sys.executable, TRACER] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=tmp, env=env)
            stdout, stderr = proc.communicate()
        proc.stdout_bytes = stdout
        proc.stderr_text = stderr.decode("utf-8", "replace")
        with open(out, "rb") as handle:
            raw = handle.read()
        proc.raw = raw
        records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
        return records, proc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compact(records):
    """One short string per event record: `c:FID:NAME:LINE`, `l:…`, `r:…=VALUE[Y]`, `e:…=VALUE`, `exit:FID`, …"""
    names = {}
    out = []
    for r in records:
        k = r["k"]
        if k == "code":
            names[r["id"]] = r["name"]
        elif k in ("call", "line", "return", "exception"):
            text = "%s:%s:%s:%s" % (k[0], r["f"], names[r["c"]], r["l"])
            if "v" in r:
                text += "=" + r["v"] + ("Y" if r.get("yield") else "")
            out.append(text)
        elif k == "exit":
            out.append("exit:%s" % r["f"])
        elif k == "test_end":
            out.append("end:" + r["outcome"])
    return out


def codes(records):
    return dict((r["name"], r) for r in records if r["k"] == "code")


def exc(name, arg):
    """The repr of a one-argument exception: Python 3.6 writes a trailing comma."""
    return "%s(%s,)" % (name, arg) if PY < (3, 7) else "%s(%s)" % (name, arg)


class Sequences(unittest.TestCase):
    def trace(self, entry, *extra, **kw):
        records, proc = run(kw.pop("source", PROG), entry, *extra, **kw)
        self.assertEqual(proc.stdout_bytes, b"", "the tracer must print nothing to stdout")
        self.assertEqual(records[0], {"k": "start", "python": "%d.%d.%d" % sys.version_info[:3], "tracer": 1})
        self.assertEqual(records[1], {"k": "test", "nodeid": "entry"})
        self.assertEqual(records[-1], {"k": "end"})
        return records, proc

    def test_loop_and_call_exact_records(self):
        src = "def add(a, b):\n    return a + b\n\n\ndef total(xs):\n    s = 0\n    for x in xs:\n" \
              "        s = add(s, x)\n    return s\n"
        records, proc = self.trace("total([1, 2])", source=src)
        self.assertEqual(proc.returncode, 0)
        code_total = {"k": "code", "id": 0, "file": "prog.py", "name": "total", "def_line": 5, "first_line": 5,
                      "lines": ["def total(xs):\n", "    s = 0\n", "    for x in xs:\n", "        s = add(s, x)\n",
                                "    return s\n"], "enclosing": []}
        code_add = {"k": "code", "id": 1, "file": "prog.py", "name": "add", "def_line": 1, "first_line": 1,
                    "lines": ["def add(a, b):\n", "    return a + b\n"], "enclosing": []}
        expected = [
            {"k": "start", "python": "%d.%d.%d" % sys.version_info[:3], "tracer": 1},
            {"k": "test", "nodeid": "entry"},
            code_total,
            {"k": "call", "f": 0, "c": 0, "l": 5, "loc": [["xs", "[1, 2]"]], "args": ["xs"], "lit": True},
            {"k": "line", "f": 0, "c": 0, "l": 6, "loc": [["xs", "[1, 2]"]]},
            {"k": "line", "f": 0, "c": 0, "l": 7, "loc": [["xs", "[1, 2]"], ["s", "0"]]},
            {"k": "line", "f": 0, "c": 0, "l": 8, "loc": [["xs", "[1, 2]"], ["s", "0"], ["x", "1"]]},
            code_add,
            {"k": "call", "f": 1, "c": 1, "l": 1, "loc": [["a", "0"], ["b", "1"]], "args": ["a", "b"], "lit": True},
            {"k": "line", "f": 1, "c": 1, "l": 2, "loc": [["a", "0"], ["b", "1"]]},
            {"k": "return", "f": 1, "c": 1, "l": 2, "v": "1", "lit": True},
            {"k": "line", "f": 0, "c": 0, "l": 7, "loc": [["xs", "[1, 2]"], ["s", "1"], ["x", "1"]]},
            {"k": "line", "f": 0, "c": 0, "l": 8, "loc": [["xs", "[1, 2]"], ["s", "1"], ["x", "2"]]},
            {"k": "call", "f": 2, "c": 1, "l": 1, "loc": [["a", "1"], ["b", "2"]], "args": ["a", "b"], "lit": True},
            {"k": "line", "f": 2, "c": 1, "l": 2, "loc": [["a", "1"], ["b", "2"]]},
            {"k": "return", "f": 2, "c": 1, "l": 2, "v": "3", "lit": True},
            {"k": "line", "f": 0, "c": 0, "l": 7, "loc": [["xs", "[1, 2]"], ["s", "3"], ["x", "2"]]},
            {"k": "line", "f": 0, "c": 0, "l": 9, "loc": [["xs", "[1, 2]"], ["s", "3"], ["x", "2"]]},
            {"k": "return", "f": 0, "c": 0, "l": 9, "v": "3", "lit": True},
            {"k": "test_end", "nodeid": "entry", "outcome": "passed"},
            {"k": "end"},
        ]
        self.assertEqual(records, expected)
        # Compact JSON lines, exactly one object each.
        self.assertTrue(proc.raw.startswith(b'{"k":"start","python":"'), proc.raw[:60])

    def test_recursion(self):
        records, _ = self.trace("fact(3)")
        self.assertEqual(compact(records), [
            "c:0:fact:11", "l:0:fact:12", "l:0:fact:14",
            "c:1:fact:11", "l:1:fact:12", "l:1:fact:14",
            "c:2:fact:11", "l:2:fact:12", "l:2:fact:13", "r:2:fact:13=1",
            "r:1:fact:14=2", "r:0:fact:14=6", "end:passed"])
        self.assertEqual(len([r for r in records if r["k"] == "code"]), 1, "one code record per code object")

    def test_generator_resume_keeps_fid_and_yield_is_a_return(self):
        records, _ = self.trace("use_gen()")
        self.assertEqual(compact(records), [
            "c:0:use_gen:22", "l:0:use_gen:23",
            "c:1:gen:17", "l:1:gen:18", "l:1:gen:19", "r:1:gen:19=0Y",
            "c:1:gen:17", "l:1:gen:18", "l:1:gen:19", "r:1:gen:19=10Y",
            "c:1:gen:17", "l:1:gen:18", "r:1:gen:18=None",
            "r:0:use_gen:23=[0, 10]", "end:passed"])
        resumed = [r for r in records if r["k"] == "call" and r["f"] == 1]
        self.assertEqual(resumed[1]["loc"], [["n", "2"], ["i", "0"]])
        final = [r for r in records if r["k"] == "return" and r["f"] == 1][-1]
        self.assertNotIn("yield", final)

    def test_exception_caught_in_the_same_frame(self):
        records, _ = self.trace("caught()")
        self.assertEqual(compact(records), [
            "c:0:caught:26", "l:0:caught:27", "l:0:caught:28", "e:0:caught:28=" + exc("ValueError", "'bad'"),
            "l:0:caught:29", "l:0:caught:30", "l:0:caught:31", "r:0:caught:31='bad'", "end:passed"])

    def test_exception_uncaught_exits_every_frame(self):
        records, proc = self.trace("uncaught()")
        self.assertEqual(compact(records), [
            "c:0:uncaught:39", "l:0:uncaught:40",
            "c:1:boom:34", "l:1:boom:35", "l:1:boom:36", "e:1:boom:36=" + exc("KeyError", "2"), "exit:1",
            "e:0:uncaught:40=" + exc("KeyError", "2"), "exit:0", "end:failed"])
        self.assertEqual(proc.returncode, 1)
        self.assertIn("KeyError: 2", proc.stderr_text)

    def test_try_finally_reraise_is_an_exit(self):
        records, _ = self.trace("call_fin()")
        k3 = exc("KeyError", "3")
        self.assertEqual(compact(records), [
            "c:0:call_fin:50", "l:0:call_fin:51", "l:0:call_fin:52",
            "c:1:fin:43", "l:1:fin:44", "l:1:fin:45",
            "c:2:boom:34", "l:2:boom:35", "l:2:boom:36", "e:2:boom:36=" + k3, "exit:2",
            "e:1:fin:45=" + k3, "l:1:fin:47", "exit:1",
            "e:0:call_fin:52=" + k3, "l:0:call_fin:53", "l:0:call_fin:54", "r:0:call_fin:54='ok'", "end:passed"])

    def test_class_methods_static_decorated(self):
        records, _ = self.trace("use_class()")
        self.assertEqual(compact(records), [
            "c:0:use_class:73", "l:0:use_class:74",
            "c:1:Shape.make:64", "l:1:Shape.make:65", "r:1:Shape.make:65=<__swe_env_entry__.Shape object at 0x?>",
            "l:0:use_class:75",
            "c:2:Shape.area:60", "l:2:Shape.area:61", "r:2:Shape.area:61=9",
            "c:3:deco.<locals>.wrapper:6", "l:3:deco.<locals>.wrapper:7",
            "c:4:Shape.double:69", "l:4:Shape.double:70", "r:4:Shape.double:70=4",
            "r:3:deco.<locals>.wrapper:7=4", "r:0:use_class:75=13", "end:passed"])
        calls = [r for r in records if r["k"] == "call"]
        self.assertEqual(calls[1]["args"], ["cls"])
        self.assertFalse(calls[1]["lit"], "a class is not a literal")
        self.assertEqual(calls[2]["loc"], [["self", "<__swe_env_entry__.Shape object at 0x?>"], ["w", "3"]])
        self.assertEqual(calls[3]["args"], ["args", "kwargs"])
        self.assertEqual(calls[3]["loc"], [["args", "(2,)"], ["kwargs", "{}"], ["f", "<function Shape.double at 0x?>"]])
        self.assertTrue(calls[3]["lit"])

    def test_code_records(self):
        records, _ = self.trace("use_class() + lam() + outer()")
        by_name = codes(records)
        double = by_name["Shape.double"]
        self.assertEqual((double["first_line"], double["def_line"]), (67, 69))
        self.assertEqual(double["lines"], ["    @staticmethod\n", "    @deco\n", "    def double(v):\n",
                                           "        return v * 2\n"])
        self.assertEqual(double["enclosing"], [{"line": 57, "text": "class Shape(object):\n"}])
        area = by_name["Shape.area"]
        self.assertEqual((area["first_line"], area["def_line"], area["lines"]),
                         (60, 60, ["    def area(self, w):\n", "        return w * w\n"]))
        make = by_name["Shape.make"]
        self.assertEqual((make["first_line"], make["def_line"]), (63, 64))
        wrapper = by_name["deco.<locals>.wrapper"]
        self.assertEqual((wrapper["first_line"], wrapper["def_line"]), (5, 6))
        self.assertEqual(wrapper["enclosing"], [{"line": 4, "text": "def deco(f):\n"}])
        inner = by_name["outer.<locals>.inner"]
        self.assertEqual(inner["lines"], ["    def inner(q):\n", "        return q\n"])
        self.assertEqual(inner["enclosing"], [{"line": 89, "text": "def outer():\n"}])
        lamb = by_name["lam.<locals>.<lambda>"]
        self.assertEqual((lamb["first_line"], lamb["def_line"], lamb["lines"]),
                         (85, 85, ["    f = lambda v: v + 1\n"]))
        self.assertEqual(lamb["enclosing"], [{"line": 84, "text": "def lam():\n"}])
        self.assertTrue(all(r["file"] == "prog.py" for r in by_name.values()))

    def test_multiline_headers_and_generator_flags(self):
        src = "class Multi(\n    object,\n):\n    def get(self):\n        return 1\n\n\n" \
              "def gen(n):\n    yield n\n\n\ndef use():\n    return Multi().get() + list(gen(2))[0]\n"
        records, proc = self.trace("use()", source=src)
        self.assertEqual(proc.returncode, 0, proc.stderr_text)
        by_name = codes(records)
        # The whole header of the enclosing class, not just its first line.
        self.assertEqual(by_name["Multi.get"]["enclosing"],
                         [{"line": 1, "text": "class Multi(\n    object,\n):\n"}])
        # Generators (and coroutines) are flagged: a call of them gives an object, not their frames' return.
        self.assertTrue(by_name["gen"]["gen"])
        self.assertNotIn("gen", by_name["use"])
        self.assertNotIn("gen", by_name["Multi.get"])

    def test_comprehensions_are_folded(self):
        records, _ = self.trace("comp([1, 2])")
        self.assertEqual(compact(records), [
            "c:0:comp:78", "l:0:comp:79",
            "c:1:fact:11", "l:1:fact:12", "l:1:fact:13", "r:1:fact:13=1",
            "c:2:fact:11", "l:2:fact:12", "l:2:fact:14",
            "c:3:fact:11", "l:3:fact:12", "l:3:fact:13", "r:3:fact:13=1", "r:2:fact:14=2",
            "l:0:comp:80", "l:0:comp:81", "r:0:comp:81=([1, 2], 3)", "end:passed"])
        names = [r["name"] for r in records if r["k"] == "code"]
        self.assertEqual(names, ["comp", "fact"])
        for r in records:
            if r["k"] == "line" and r["f"] == 0:
                self.assertNotIn("x", [n for n, _ in r["loc"]], r)
                self.assertNotIn("v", [n for n, _ in r["loc"]], r)

    def test_lambda_and_nested(self):
        records, _ = self.trace("lam() + outer()")
        self.assertEqual(compact(records), [
            "c:0:lam:84", "l:0:lam:85", "l:0:lam:86",
            "c:1:lam.<locals>.<lambda>:85", "l:1:lam.<locals>.<lambda>:85", "r:1:lam.<locals>.<lambda>:85=2",
            "r:0:lam:86=2",
            "c:2:outer:89", "l:2:outer:90", "l:2:outer:92",
            "c:3:outer.<locals>.inner:90", "l:3:outer.<locals>.inner:91", "r:3:outer.<locals>.inner:91=5",
            "r:2:outer:92=5", "end:passed"])

    def test_coroutines_await_is_a_yield(self):
        src = "import asyncio\n\n\nasync def leaf(x):\n    await asyncio.sleep(0)\n    return x * 2\n\n\n" \
              "async def top():\n    a = await leaf(1)\n    return a + 1\n"
        records, proc = self.trace("asyncio.new_event_loop().run_until_complete(top())", source=src)
        self.assertEqual(proc.returncode, 0, proc.stderr_text)
        self.assertEqual(compact(records), [
            "c:0:top:9", "l:0:top:10", "c:1:leaf:4", "l:1:leaf:5", "r:1:leaf:5=NoneY", "r:0:top:10=NoneY",
            "c:0:top:9", "c:1:leaf:4", "e:1:leaf:5=StopIteration()", "l:1:leaf:6", "r:1:leaf:6=2",
            "e:0:top:10=" + exc("StopIteration", "2"), "l:0:top:11", "r:0:top:11=3", "end:passed"])

    def test_bare_return_through_with_and_finally_is_a_return(self):
        src = "import io\n\n\ndef w():\n    with io.StringIO() as h:\n        return\n\n\n" \
              "def f():\n    try:\n        return\n    finally:\n        x = 1\n\n\n" \
              "def g():\n    try:\n        int('x')\n    except ValueError:\n        pass\n    with io.StringIO():\n" \
              "        return\n\n\ndef h():\n    try:\n        int('x')\n    except KeyError:\n        pass\n\n\n" \
              "def k():\n    try:\n        h()\n    except ValueError:\n        return 1\n"
        records, proc = self.trace("(w(), f(), g(), k())", source=src)
        self.assertEqual(proc.returncode, 0, proc.stderr_text)
        seq = compact(records)
        returns = [s for s in seq if s.startswith("r:") or s.startswith("exit:")]
        self.assertEqual([r.split(":")[2] + r[r.index("="):] if r.startswith("r:") else r for r in returns],
                         ["w=None", "f=None", "g=None", "exit:4", "k=1"])
        self.assertEqual([s for s in seq if s.startswith("l:4:")], ["l:4:h:26", "l:4:h:27", "l:4:h:28"])

    def test_multiline_statement(self):
        records, _ = self.trace("multi(1, 2)")
        seq = compact(records)
        self.assertEqual(seq[0], "c:0:multi:95")
        self.assertEqual(seq[-2:], ["r:0:multi:99=3", "end:passed"])
        lines = [int(s.split(":")[3]) for s in seq if s.startswith("l:")]
        self.assertEqual(lines[0], 97)
        self.assertEqual(lines[-1], 99)
        self.assertTrue(set(lines) <= set([97, 98, 99]), lines)
        code = codes(records)["multi"]
        self.assertEqual(code["lines"], ["def multi(a,\n", "          b):\n", "    c = (a +\n", "         b)\n",
                                         "    return c\n"])

    def test_stdin_and_file_give_identical_bytes_and_runs_are_deterministic(self):
        _, a = self.trace("use_class() + comp([3])[1]", env={"PYTHONHASHSEED": "1"})
        _, b = self.trace("use_class() + comp([3])[1]", stdin=True, env={"PYTHONHASHSEED": "2"})
        self.assertEqual(a.raw, b.raw)
        self.assertEqual(a.returncode, 0)
        self.assertEqual(b.returncode, 0)


REPRS = '''\
class Plain(object):
    pass


class Broken(object):
    def __repr__(self):
        raise RuntimeError("no repr")


class Rec(object):
    def __repr__(self):
        raise RecursionError("deep")


def values():
    obj = Plain()
    s = set(["pear", "apple", "fig"])
    fs = frozenset([3, 1, 2])
    big = 7 ** 5000
    long = "x" * 1000
    blob = b"y" * 1000
    nested = [[[[[[[[1]]]]]]]]
    cyc = [1]
    cyc.append(cyc)
    bad = Broken()
    d = {"b": 1, "a": (1,)}
    return len(long)


def many(a, b, c, d, e):
    return a


def lits(a, b, c, d):
    return [a, b]


def ret_nan():
    return float("nan")


def ret_set():
    return set()


def after_error():
    r = Rec()
    x = 1
    return x + 1


def spin(n):
    i = 0
    while i < n:
        i += 1
    return i
'''


RECURSION = '''\
import sys


def r(n):
    if n == 0:
        return 0
    return 1 + r(n - 1)


def deepest():
    sys.setrecursionlimit(300)
    best = 0
    for n in range(200, 300):
        try:
            r(n)
            best = n
        except RecursionError:
            break
    return best


def probe(n):
    sys.setrecursionlimit(300)
    return r(n)
'''


class Values(unittest.TestCase):
    def test_deterministic_bounded_reprs(self):
        records, proc = run(REPRS, "values()", "--max-repr", "40", env={"PYTHONHASHSEED": "7"})
        self.assertEqual(proc.returncode, 0, proc.stderr_text)
        last = [r for r in records if r["k"] == "line"][-1]
        loc = dict(last["loc"])
        self.assertEqual(loc["obj"], "<__swe_env_entry__.Plain object at 0x?>")
        self.assertEqual(loc["s"], "{'apple', 'fig', 'pear'}")
        self.assertEqual(loc["fs"], "frozenset({1, 2, 3})")
        self.assertEqual(loc["big"], "<int of 14037 bits>")
        self.assertEqual(loc["long"], "'" + "x" * 39 + "...")
        self.assertEqual(loc["blob"], "b'" + "y" * 38 + "...")
        self.assertEqual(loc["nested"], "[[[[[[[...]]]]]]]")
        self.assertEqual(loc["cyc"], "[1, [...]]")
        self.assertEqual(loc["bad"], "<Broken object (repr failed)>")
        self.assertEqual(loc["d"], "{'b': 1, 'a': (1,)}")
        again, _ = run(REPRS, "values()", "--max-repr", "40", env={"PYTHONHASHSEED": "99"})
        self.assertEqual(records, again)

    def test_max_locals(self):
        records, _ = run(REPRS, "many(1, 2, 3, 4, 5)", "--max-locals", "2")
        call = [r for r in records if r["k"] == "call"][0]
        self.assertEqual(call["loc"], [["a", "1"], ["b", "2"]])
        self.assertEqual(call["args"], ["a", "b", "c", "d", "e"])

    def test_literal_flags(self):
        records, _ = run(REPRS, "(lits(1, 'a', (2.5, None), {'k': [True]}), lits(Plain, 1, 2, 3),"
                               " ret_nan(), ret_set(), lits('x' * 500, 1, 2, 3))")
        calls = [r["lit"] for r in records if r["k"] == "call"]
        rets = [r["lit"] for r in records if r["k"] == "return"]
        self.assertEqual(calls, [True, False, True, True, False])
        self.assertEqual(rets, [True, False, False, True, False])

    def test_internal_error_disables_tracing_without_changing_the_outcome(self):
        records, proc = run(REPRS, "after_error()")
        self.assertEqual(proc.returncode, 0, proc.stderr_text)
        kinds = [r["k"] for r in records]
        self.assertIn("error", kinds)
        self.assertEqual(kinds[kinds.index("error") + 1:], ["test_end", "end"])
        self.assertEqual(records[-2], {"k": "test_end", "nodeid": "entry", "outcome": "passed"})

    def test_recursion_near_the_limit_keeps_the_outcome(self):
        src = RECURSION
        tmp = tempfile.mkdtemp(prefix="swe-env-tracer-depth-")
        try:
            with open(os.path.join(tmp, "rec.py"), "w") as handle:
                handle.write(src)
            best = int(subprocess.check_output([sys.executable, "-c", "import rec; print(rec.deepest())"], cwd=tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        # The tracer's own frames (main, run_entry, the entry expression) take a few levels: stay 6 below.
        records, proc = run(src, "probe(%d)" % (best - 6))
        self.assertEqual(proc.returncode, 0, proc.stderr_text[-500:])
        self.assertEqual(records[-2], {"k": "test_end", "nodeid": "entry", "outcome": "passed"})
        errors = [r for r in records if r["k"] == "error"]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("RecursionError", errors[0]["detail"])

    def test_event_cap(self):
        records, proc = run(REPRS, "spin(100)", "--max-events", "10")
        self.assertEqual(proc.returncode, 0)
        events = [r for r in records if r["k"] in ("call", "line", "return")]
        self.assertEqual(len(events), 10)
        self.assertEqual(records[-3:], [{"k": "cap", "reason": "events", "nodeid": "entry"},
                                        {"k": "test_end", "nodeid": "entry", "outcome": "passed"},
                                        {"k": "end"}])

    def test_time_cap(self):
        records, proc = run(REPRS, "spin(10 ** 6)", "--time-cap", "0.3", "--max-bytes", "100000000")
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(records[-3], {"k": "cap", "reason": "time", "nodeid": "entry"})
        self.assertEqual(records[-2]["outcome"], "passed")

    def test_byte_cap(self):
        records, proc = run(REPRS, "spin(1000)", "--max-bytes", "2000")
        self.assertEqual(proc.returncode, 0)
        self.assertLessEqual(len(proc.raw), 2000)
        self.assertEqual(records[-2:], [{"k": "cap", "reason": "bytes"}, {"k": "end"}])


PROCESS = '''\
import sys
import threading


def work(n):
    return n + 1


def quit(code):
    sys.exit(code)


def interrupt():
    raise KeyboardInterrupt()


def threaded():
    t = threading.Thread(target=work, args=(1,))
    t.start()
    t.join()
    return work(2)


if __name__ == "__main__":
    print("main block must not run")
'''


class Process(unittest.TestCase):
    def test_sys_exit_keeps_the_exit_code(self):
        records, proc = run(PROCESS, "quit(3)")
        self.assertEqual(proc.returncode, 3)
        self.assertEqual(records[-2], {"k": "test_end", "nodeid": "entry", "outcome": "failed"})
        records, proc = run(PROCESS, "quit(0)")
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(records[-2], {"k": "test_end", "nodeid": "entry", "outcome": "passed"})
        self.assertEqual(compact(records)[-3:], ["e:0:quit:10=SystemExit(0)" if PY >= (3, 7) else
                                                 "e:0:quit:10=SystemExit(0,)", "exit:0", "end:passed"])

    def test_keyboard_interrupt_passes_through(self):
        plain = subprocess.call([sys.executable, "-c", "raise KeyboardInterrupt()"], stderr=subprocess.DEVNULL)
        records, proc = run(PROCESS, "interrupt()")
        self.assertEqual(proc.returncode, plain)
        self.assertIn("KeyboardInterrupt", proc.stderr_text)

    def test_threads_are_not_traced_and_main_block_does_not_run(self):
        records, proc = run(PROCESS, "threaded()")
        self.assertEqual(proc.stdout_bytes, b"")
        self.assertEqual(proc.returncode, 0)
        calls = [(r["f"], dict(r["loc"])) for r in records if r["k"] == "call"]
        self.assertEqual(calls, [(0, {}), (1, {"n": "2"})])

    def test_bad_usage_exits_2(self):
        proc = subprocess.Popen([sys.executable, TRACER, "entry", "--out"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        stdout, stderr = proc.communicate()
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(stdout, b"")
        self.assertIn(b"--out", stderr)


def have_pytest():
    try:
        import pytest  # noqa: F401
        return True
    except ImportError:
        return False


class PytestMode(unittest.TestCase):
    def test_outcomes_and_exit_code(self):
        if not have_pytest():
            self.skipTest("pytest is not importable by this interpreter (tests/it/trace.rs covers it)")
        tmp = tempfile.mkdtemp(prefix="swe-env-tracer-pytest-")
        try:
            with open(os.path.join(tmp, "lib.py"), "w") as handle:
                handle.write("def double(x):\n    return x * 2\n")
            with open(os.path.join(tmp, "test_lib.py"), "w") as handle:
                handle.write(textwrap.dedent('''\
                    import pytest
                    from lib import double


                    def test_pass():
                        assert double(2) == 4


                    def test_fail():
                        assert double(2) == 5


                    @pytest.mark.skip(reason="no")
                    def test_skip():
                        pass
                    '''))
            plain = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = os.path.join(tmp, "events.jsonl")
            with open(TRACER, "rb") as handle:
                script = handle.read()
            env = dict(os.environ)
            env["PYTHONPATH"] = tmp
            proc = subprocess.Popen([sys.executable, "-", "pytest", "--out", out, "--root", tmp, "--",
                                     "-q", "-p", "no:cacheprovider"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp, env=env)
            proc.communicate(script)
            self.assertEqual(proc.returncode, plain)
            self.assertEqual(plain, 1)
            with open(out) as handle:
                records = [json.loads(line) for line in handle]
            ends = dict((r["nodeid"], r["outcome"]) for r in records if r["k"] == "test_end")
            self.assertEqual(ends, {"test_lib.py::test_pass": "passed", "test_lib.py::test_fail": "failed",
                                    "test_lib.py::test_skip": "skipped"})
            names = [r["name"] for r in records if r["k"] == "code"]
            self.assertIn("double", names)
            self.assertEqual(records[-1], {"k": "end"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
