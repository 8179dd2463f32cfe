"""Tests of orchestrator/src/mine/mutate.py, the stdlib-only mutation script of `swe-env mine mutate`.

Stdlib only (unittest) plus the `git` CLI; every case builds a small repository in a temporary directory and runs
the script as a subprocess under the interpreter running the tests (tests/python/run_mutate_tests.sh runs them
under every Python 3.6 ... 3.12 found). Fixtures use only syntax that Python 3.6 parses.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "orchestrator", "src", "mine", "mutate.py")

OPERATORS = ["cmp_flip", "boundary_inc", "boundary_dec", "negate_cond", "remove_stmt", "remove_return", "swap_args",
             "const_flip", "arith_flip", "bool_flip"]

OPS_PY = '"""Module doc."""\nLIMIT = 3 < 4\n\n\ndef cmp(a, b, c):\n    return a < b, a >= c, a == b, a is None, a is not b, a in c, a not in c\n\n\ndef bound(xs, n):\n    for i in range(0, 10):\n        if n > 2:\n            return xs[1:-2]\n    return xs[n]\n\n\ndef neg(x):\n    if x:\n        x = 1\n    elif not x:\n        pass\n    while x:\n        x = 0\n\n\ndef stmts(x):\n    """Doc."""\n    x.append(1)\n    y = 2\n    y += 3\n    return None\n\n\ndef only(x):\n    x.append(1)\n\n\ndef ret(x):\n    if x:\n        return x + 1\n    return\n\n\ndef swap(a, b):\n    f(a, b)\n    f(a, a)\n    f(*a, b)\n    f(a, b=b)\n\n\nclass K(object):\n    def consts(self):\n        return True, False, 0, 1, 2, "", \'\'\n\n\ndef arith(a, b):\n    a += b\n    a -= b\n    return a + b - a * b / a // b % a\n\n\ndef logic(a, b, c):\n    def inner():\n        return a and b or c\n    return inner\n'

# (line, col, function, mutated line stripped) of every mutant of OPS_PY, per operator, when only that operator runs.
EXPECTED = {
    "cmp_flip": [
        (6, 13, 'cmp', 'return a <= b, a >= c, a == b, a is None, a is not b, a in c, a not in c'),
        (6, 20, 'cmp', 'return a < b, a > c, a == b, a is None, a is not b, a in c, a not in c'),
        (6, 28, 'cmp', 'return a < b, a >= c, a != b, a is None, a is not b, a in c, a not in c'),
        (6, 36, 'cmp', 'return a < b, a >= c, a == b, a is not None, a is not b, a in c, a not in c'),
        (6, 47, 'cmp', 'return a < b, a >= c, a == b, a is None, a is b, a in c, a not in c'),
        (6, 59, 'cmp', 'return a < b, a >= c, a == b, a is None, a is not b, a not in c, a not in c'),
        (6, 67, 'cmp', 'return a < b, a >= c, a == b, a is None, a is not b, a in c, a in c'),
        (11, 13, 'bound', 'if n >= 2:'),
    ],
    "boundary_inc": [
        (10, 19, 'bound', 'for i in range(1, 10):'),
        (10, 22, 'bound', 'for i in range(0, 11):'),
        (11, 15, 'bound', 'if n > 3:'),
        (12, 22, 'bound', 'return xs[2:-2]'),
        (12, 25, 'bound', 'return xs[1:-3]'),
    ],
    "boundary_dec": [
        (10, 22, 'bound', 'for i in range(0, 9):'),
        (11, 15, 'bound', 'if n > 1:'),
        (12, 22, 'bound', 'return xs[0:-2]'),
        (12, 25, 'bound', 'return xs[1:-1]'),
    ],
    "negate_cond": [
        (11, 8, 'bound', 'if not (n > 2):'),
        (17, 4, 'neg', 'if not (x):'),
        (19, 4, 'neg', 'elif not (not x):'),
        (21, 4, 'neg', 'while not (x):'),
        (38, 4, 'ret', 'if not (x):'),
    ],
    "remove_stmt": [
        (27, 4, 'stmts', 'pass'),
        (28, 4, 'stmts', 'pass'),
        (29, 4, 'stmts', 'pass'),
        (44, 4, 'swap', 'pass'),
        (45, 4, 'swap', 'pass'),
        (46, 4, 'swap', 'pass'),
        (47, 4, 'swap', 'pass'),
        (56, 4, 'arith', 'pass'),
        (57, 4, 'arith', 'pass'),
    ],
    "remove_return": [
        (6, 4, 'cmp', 'return'),
        (12, 12, 'bound', 'return'),
        (13, 4, 'bound', 'return'),
        (39, 8, 'ret', 'return'),
        (52, 8, 'K.consts', 'return'),
        (58, 4, 'arith', 'return'),
        (63, 8, 'logic.inner', 'return'),
        (64, 4, 'logic', 'return'),
    ],
    "swap_args": [
        (10, 18, 'bound', 'for i in range(10, 0):'),
        (44, 5, 'swap', 'f(b, a)'),
    ],
    "const_flip": [
        (10, 19, 'bound', 'for i in range(1, 10):'),
        (12, 22, 'bound', 'return xs[0:-2]'),
        (18, 12, 'neg', 'x = 0'),
        (22, 12, 'neg', 'x = 1'),
        (27, 13, 'stmts', 'x.append(0)'),
        (34, 13, 'only', 'x.append(0)'),
        (39, 19, 'ret', 'return x + 0'),
        (52, 15, 'K.consts', 'return False, False, 0, 1, 2, "", \'\''),
        (52, 21, 'K.consts', 'return True, True, 0, 1, 2, "", \'\''),
        (52, 28, 'K.consts', 'return True, False, 1, 1, 2, "", \'\''),
        (52, 31, 'K.consts', 'return True, False, 0, 0, 2, "", \'\''),
        (52, 37, 'K.consts', 'return True, False, 0, 1, 2, "x", \'\''),
        (52, 41, 'K.consts', 'return True, False, 0, 1, 2, "", \'x\''),
    ],
    "arith_flip": [
        (29, 6, 'stmts', 'y -= 3'),
        (39, 17, 'ret', 'return x - 1'),
        (56, 6, 'arith', 'a -= b'),
        (57, 6, 'arith', 'a += b'),
        (58, 13, 'arith', 'return a - b - a * b / a // b % a'),
        (58, 17, 'arith', 'return a + b + a * b / a // b % a'),
        (58, 21, 'arith', 'return a + b - a / b / a // b % a'),
        (58, 25, 'arith', 'return a + b - a * b * a // b % a'),
        (58, 29, 'arith', 'return a + b - a * b / a / b % a'),
    ],
    "bool_flip": [
        (63, 17, 'logic.inner', 'return a or b or c'),
        (63, 23, 'logic.inner', 'return a and b and c'),
    ],
}


def run(args, check=True):
    p = subprocess.Popen([sys.executable, SCRIPT] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True)
    out, err = p.communicate()
    if check and p.returncode != 0:
        raise AssertionError("mutate.py %s failed (%d): %s %s" % (" ".join(args), p.returncode, out, err))
    return p.returncode, json.loads(out), err


def git(cwd, *args):
    p = subprocess.Popen(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "core.autocrlf=false"]
                         + list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True)
    out, err = p.communicate()
    if p.returncode != 0:
        raise AssertionError("git %s failed: %s %s" % (" ".join(args), out, err))
    return out


class Repo(object):
    def __init__(self, files):
        self.root = tempfile.mkdtemp(prefix="mutate-test-")
        for rel, data in files.items():
            path = os.path.join(self.root, rel)
            d = os.path.dirname(path)
            if not os.path.isdir(d):
                os.makedirs(d)
            if not isinstance(data, bytes):
                data = data.encode("utf-8")
            with open(path, "wb") as f:
                f.write(data)

    def list(self, *extra):
        return run(["list", "--root", self.root] + list(extra))[1]

    def read(self, rel):
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def close(self):
        shutil.rmtree(self.root)


class MutateTest(unittest.TestCase):
    def repo(self, files):
        r = Repo(files)
        self.addCleanup(r.close)
        return r

    def test_every_operator_exact(self):
        r = self.repo({"pkg/ops.py": OPS_PY})
        for op, want in sorted(EXPECTED.items()):
            got = [(m["line"], m["col"], m["function"], m["after"].strip()) for m in r.list("--operators", op)["mutants"]]
            self.assertEqual(got, want, op)
            for m in r.list("--operators", op)["mutants"]:
                self.assertEqual(m["operator"], op)
                self.assertEqual(m["file"], "pkg/ops.py")
                self.assertEqual(m["id"], "pkg/ops.py:%d:%d:%s" % (m["line"], m["col"], op))
        self.assertEqual(sorted(EXPECTED), sorted(OPERATORS))
        self.assertTrue(all(EXPECTED[op] for op in OPERATORS))

    def test_script_on_stdin(self):
        r = self.repo({"pkg/ops.py": OPS_PY})
        with open(SCRIPT, "rb") as f:
            p = subprocess.Popen([sys.executable, "-", "list", "--root", r.root, "--max-per-file", "5"],
                                 stdin=f, stdout=subprocess.PIPE)
            out = p.communicate()[0]
        self.assertEqual(p.returncode, 0)
        self.assertEqual(json.loads(out.decode("utf-8")), r.list("--max-per-file", "5"))

    def test_before_after_lines(self):
        r = self.repo({"m.py": "def f(a, b):\n    return (a <\n            b)\n"})
        muts = r.list("--operators", "cmp_flip,remove_return")["mutants"]
        self.assertEqual([(m["operator"], m["before"], m["after"]) for m in muts], [
            ("remove_return", "    return (a <\n            b)", "    return"),
            ("cmp_flip", "    return (a <", "    return (a <="),
        ])

    def test_full_list_is_ordered_and_unique(self):
        r = self.repo({"pkg/ops.py": OPS_PY, "pkg/a.py": "def g(x):\n    return x < 0\n"})
        muts = r.list()["mutants"]
        keys = [(m["file"], m["line"], m["col"]) for m in muts]
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(len(set(m["id"] for m in muts)), len(muts))
        self.assertEqual(muts[0]["file"], "pkg/a.py")

    def test_boundary_through_plus_minus(self):
        r = self.repo({"m.py": "def f(xs, i, n):\n    if i < n - 1:\n        return xs[:len(xs) - 2], range(n + 1)\n"
                                "    return xs[i + 1]\n"})
        got = [(m["line"], m["col"], m["after"].strip()) for m in r.list("--operators", "boundary_inc")["mutants"]]
        self.assertEqual(got, [(2, 15, "if i < n - 2:"), (3, 29, "return xs[:len(xs) - 3], range(n + 1)"),
                               (3, 43, "return xs[:len(xs) - 2], range(n + 2)")])

    def test_dedup_same_source(self):
        # `x < 0` -> `x < 1` is both boundary_inc and const_flip: one mutant, the first operator's.
        r = self.repo({"m.py": "def f(x):\n    return x < 0\n"})
        muts = r.list()["mutants"]
        at = [m["operator"] for m in muts if (m["line"], m["col"]) == (2, 15)]
        self.assertEqual(at, ["boundary_inc"])
        self.assertEqual(len(r.list("--operators", "const_flip")["mutants"]), 1)
        afters = [m["after"] for m in muts]
        self.assertEqual(len(afters), len(set(afters)))

    def test_determinism_and_seed(self):
        src = "".join("def f%d(a, b):\n    if a < b and b > %d:\n        return a + b\n    return a - b\n\n" % (i, i)
                      for i in range(8))
        r = self.repo({"pkg/m.py": src, "pkg/n.py": src})
        args = ["--max-per-function", "2", "--max-per-file", "5", "--seed", "7"]
        first = r.list(*args)
        self.assertEqual(first, r.list(*args))
        ids = [m["id"] for m in first["mutants"]]
        self.assertEqual(len(ids), 10)
        others = [[m["id"] for m in r.list("--max-per-function", "2", "--max-per-file", "5", "--seed", str(s))["mutants"]]
                  for s in range(1, 6)]
        self.assertTrue(any(o != ids for o in others), "the seed changes nothing")

    def test_caps(self):
        src = "".join("def f%d(a, b):\n    if a < b and b > %d:\n        return a + b\n    return a - b\n\n" % (i, i)
                      for i in range(6))
        r = self.repo({"m.py": src, "n.py": src})
        full = r.list()["mutants"]
        self.assertGreater(len(full), 6 * 2 * 5)
        per_fn = r.list("--max-per-function", "3")["mutants"]
        self.assertEqual(len(per_fn), 2 * 6 * 3)
        counts = {}
        for m in per_fn:
            counts[(m["file"], m["function"])] = counts.get((m["file"], m["function"]), 0) + 1
        self.assertEqual(set(counts.values()), set([3]))
        per_file = r.list("--max-per-file", "4")["mutants"]
        self.assertEqual([m["file"] for m in per_file], ["m.py"] * 4 + ["n.py"] * 4)
        # round-robin: four mutants of one file come from four different functions
        self.assertEqual(len(set(m["function"] for m in per_file if m["file"] == "m.py")), 4)
        ids = set(m["id"] for m in full)
        self.assertTrue(all(m["id"] in ids for m in per_fn + per_file))

    def test_skips_tests_syntax_errors_and_module_level(self):
        body = "def f(x):\n    return x + 1\n"
        r = self.repo({
            "pkg/a.py": body,
            "pkg/tests/b.py": body,
            "pkg/test/c.py": body,
            "testing/d.py": body,
            "test_e.py": body,
            "f_test.py": body,
            "conftest.py": body,
            ".hidden/g.py": body,
            "pkg/big.py": body + "#" * 1000000 + "\n",
            "venv/pyvenv.cfg": "",
            "venv/lib/h.py": body,
            "pkg/broken.py": "def f(:\n    return 1\n",
            "pkg/consts.py": "X = 1 + 2 < 3\n\nclass C(object):\n    y = True\n    def m(self, z=0):\n        pass\n",
        })
        out = r.list()
        self.assertEqual(sorted(set(m["file"] for m in out["mutants"])), ["pkg/a.py"])
        os.symlink("a.py", os.path.join(r.root, "pkg", "link.py"))
        out = r.list()
        self.assertEqual(sorted(set(m["file"] for m in out["mutants"])), ["pkg/a.py"])
        self.assertEqual([s["file"] for s in out["skipped"]], ["pkg/big.py", "pkg/broken.py"])
        self.assertIn("larger than", out["skipped"][0]["reason"])
        self.assertIn("does not parse", out["skipped"][1]["reason"])
        self.assertEqual(r.list("--files", "pkg/link.py")["skipped"], [{"file": "pkg/link.py", "reason": "a symbolic link"}])
        named = r.list("--files", "pkg/a.py,./test_e.py,pkg/tests/b.py,missing.py")
        self.assertEqual(sorted(set(m["file"] for m in named["mutants"])), ["pkg/a.py"])
        self.assertEqual(sorted(s["file"] for s in named["skipped"]), ["missing.py", "pkg/tests/b.py", "test_e.py"])

    def test_fstring_insides_untouched(self):
        r = self.repo({"m.py": 'def f(a, b):\n    return f"{a < b}{a + 1}" + ""\n'})
        got = [(m["col"], m["operator"]) for m in r.list()["mutants"]]
        self.assertEqual(got, [(4, "remove_return"), (29, "arith_flip"), (31, "const_flip")])

    def test_apply_reverts_exactly(self):
        files = {
            "pkg/ops.py": OPS_PY,
            "pkg/crlf.py": OPS_PY.replace("\n", "\r\n"),
            "pkg/noeol.py": "def f(a, b):\n    x = a < b\n    return x and a > 0",
            "pkg/bom.py": b"\xef\xbb\xbf# -*- coding: utf-8 -*-\ndef f(s):\n    s.x = 1\n    return s == '\xc3\xa9'\n",
            "tool.py": "#!/usr/bin/env python3\ndef main(argv):\n    print(argv[1:], 2)\n    return 0\n",
        }
        r = self.repo(files)
        os.chmod(os.path.join(r.root, "tool.py"), 0o755)
        git(r.root, "init", "-q")
        git(r.root, "add", "-A")
        git(r.root, "commit", "-q", "-m", "base")
        muts = r.list()["mutants"]
        self.assertEqual(sorted(set(m["file"] for m in muts)), sorted(files))
        originals = dict((rel, r.read(rel)) for rel in files)
        for m in muts:
            rel = m["file"]
            mode = stat.S_IMODE(os.stat(os.path.join(r.root, rel)).st_mode)
            code, out, _ = run(["apply", "--root", r.root, "--id", m["id"]])
            self.assertEqual(out["file"], rel)
            mutated = r.read(rel)
            self.assertNotEqual(mutated, originals[rel], m["id"])
            compile(mutated, rel, "exec")
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(r.root, rel)).st_mode), mode)
            self.assertTrue(out["diff"].startswith("diff --git a/%s b/%s\n--- a/%s\n+++ b/%s\n" % (rel, rel, rel, rel)))
            patch = os.path.join(r.root, ".git", "gold.patch")
            with open(patch, "wb") as f:
                f.write(out["diff"].encode("utf-8"))
            git(r.root, "apply", "--check", patch)
            git(r.root, "apply", patch)
            self.assertEqual(r.read(rel), originals[rel], m["id"])
            self.assertEqual(git(r.root, "status", "--porcelain"), "")

    def test_apply_refuses_unknown_ids(self):
        r = self.repo({"m.py": "def f(x):\n    for i in x:\n        pass\n    return x\n", "test_m.py": "def t(): pass\n"})
        for mid in ["m.py:2:10:cmp_flip", "m.py:4:4:bool_flip", "m.py:x:1:cmp_flip", "nope", "test_m.py:1:0:remove_stmt",
                    "gone.py:1:0:remove_stmt"]:
            code, out, _ = run(["apply", "--root", r.root, "--id", mid], check=False)
            self.assertEqual(code, 1, mid)
            self.assertIn("error", out)
        self.assertEqual(r.read("m.py"), b"def f(x):\n    for i in x:\n        pass\n    return x\n")

    def test_bad_usage(self):
        for args in [[], ["list"], ["list", "--root", "/nonexistent-dir"], ["list", "--root", "/", "--operators", "x"],
                     ["list", "--root", "/", "--max-per-file", "-1"], ["apply", "--root", "/"]]:
            code, out, _ = run(args, check=False)
            self.assertEqual(code, 1, args)
            self.assertIn("error", out)


if __name__ == "__main__":
    unittest.main()
