"""swe-env tracer (issue 16): records line/call/return/exception events of repo code as JSON lines.

Stdlib only, Python 3.6 to 3.12. Piped on stdin into a task container:
    python - pytest --out FILE [options] -- PYTEST_ARGS...
    python - entry --out FILE --file PATH --entry EXPR [options]
Options: --root DIR (repeatable, default /testbed), --include GLOB, --exclude GLOB (repeatable, fnmatch on the
absolute path), --max-repr N, --max-locals N, --max-events N (per test), --time-cap SECONDS (per test),
--max-bytes N (whole file). The record format is the contract of issue 16 (orchestrator/src/trace/event.rs).

The tracer never changes the traced program's outcome: every internal error disables tracing (reported as an
`error` record), the previous trace function is restored, nothing is printed to stdout, and the process exits with
the program's exit code.
"""

import ast
import dis
import fnmatch
import inspect
import json
import linecache
import os
import re
import sys
import time

TRACER_VERSION = 1
ENTRY_MODULE = "__swe_env_entry__"
FOLDED = frozenset(["<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"])
CO_OPTIMIZED = 0x0001
CO_NEWLOCALS = 0x0002
CO_VARARGS = 0x0004
CO_VARKEYWORDS = 0x0008
# CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR.
SUSPENDABLE = 0x0020 | 0x0080 | 0x0100 | 0x0200
MAX_BYTES_CEILING = 60 * 1024 * 1024
ADDRESS = re.compile(r"( at |id=)0x[0-9a-fA-F]+")
OP = dis.opmap
RETURN_OPS = frozenset(OP[n] for n in ("RETURN_VALUE", "RETURN_CONST") if n in OP)
YIELD_OPS = frozenset(OP[n] for n in ("YIELD_VALUE",) if n in OP)
YIELD_FROM = OP.get("YIELD_FROM")
END_FINALLY = OP.get("END_FINALLY")
FOR_ITER = OP.get("FOR_ITER")
LITERAL_TYPES = (int, float, complex, str, bytes, bool, type(None), tuple, list, dict, set)
CONTAINERS = (list, tuple, dict, set, frozenset)
SETTRACE = sys.settrace
GETTRACE = sys.gettrace


class Options(object):
    def __init__(self):
        self.mode = None
        self.out = None
        self.roots = []
        self.include = []
        self.exclude = []
        self.max_repr = 200
        self.max_locals = 32
        self.max_events = 200000
        self.time_cap = 30.0
        self.max_bytes = 48 * 1024 * 1024
        self.file = None
        self.entry = None
        self.rest = []


# Exit code of bad usage (options, an --entry that is not an expression): the host reports it as bad input.
USAGE_EXIT = 2


def usage(message):
    sys.stderr.write("swe-env tracer: %s\n" % message)
    sys.stderr.write("usage: python - pytest --out FILE [options] -- PYTEST_ARGS...\n"
                     "       python - entry --out FILE --file PATH --entry EXPR [options]\n")
    sys.exit(USAGE_EXIT)


def parse_args(argv):
    opts = Options()
    if not argv or argv[0] not in ("pytest", "entry"):
        usage("the first argument must be the mode, `pytest` or `entry`")
    opts.mode = argv[0]
    i = 1
    ints = {"--max-repr": "max_repr", "--max-locals": "max_locals", "--max-events": "max_events",
            "--max-bytes": "max_bytes"}
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts.rest = argv[i + 1:]
            break
        if i + 1 >= len(argv):
            usage("option %s needs a value" % arg)
        value = argv[i + 1]
        i += 2
        if arg == "--out":
            opts.out = value
        elif arg == "--root":
            opts.roots.append(os.path.abspath(value))
        elif arg == "--include":
            opts.include.append(value)
        elif arg == "--exclude":
            opts.exclude.append(value)
        elif arg == "--file":
            opts.file = value
        elif arg == "--entry":
            opts.entry = value
        elif arg == "--time-cap":
            try:
                opts.time_cap = float(value)
            except ValueError:
                usage("--time-cap takes seconds, got %r" % value)
        elif arg in ints:
            try:
                setattr(opts, ints[arg], int(value))
            except ValueError:
                usage("%s takes an integer, got %r" % (arg, value))
        else:
            usage("unknown option %s" % arg)
    if not opts.out:
        usage("--out FILE is required")
    if opts.mode == "entry" and (not opts.file or not opts.entry):
        usage("entry mode needs --file PATH and --entry EXPR")
    if opts.max_repr < 8 or opts.max_locals < 0 or opts.max_events < 1 or opts.max_bytes < 1024:
        usage("caps too small: --max-repr >= 8, --max-locals >= 0, --max-events >= 1, --max-bytes >= 1024")
    opts.max_bytes = min(opts.max_bytes, MAX_BYTES_CEILING)
    if opts.mode == "entry":
        opts.roots.append(os.path.dirname(os.path.abspath(opts.file)))
    if not opts.roots:
        opts.roots = ["/testbed"]
    return opts


# Records after which the file is flushed: what a later kill of the process must not lose.
FLUSHED = frozenset(("cap", "error", "test", "test_end"))


class Writer(object):
    """JSON lines into the output file, never more than max_bytes in total."""

    def __init__(self, path, max_bytes):
        self.handle = open(path, "wb")
        self.max_bytes = max_bytes
        self.written = 0
        self.full = False
        self.reserve = len(self.encode({"k": "cap", "reason": "bytes"})) + len(self.encode({"k": "end"}))

    @staticmethod
    def encode(record):
        return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8", "replace")

    def write(self, record):
        if self.full:
            return False
        data = self.encode(record)
        if self.written + len(data) + self.reserve > self.max_bytes:
            self.full = True
            self.raw(self.encode({"k": "cap", "reason": "bytes"}))
            self.handle.flush()
            return False
        self.raw(data)
        if record.get("k") in FLUSHED:
            # A program that runs on after a cap (or forever) must not keep the cap and the events before it in
            # this process's buffer until --timeout kills it.
            self.handle.flush()
        return True

    def raw(self, data):
        self.handle.write(data)
        self.written += len(data)

    def close(self):
        self.raw(self.encode({"k": "end"}))
        self.handle.close()


class Repr(object):
    """Deterministic bounded reprs."""

    def __init__(self, limit):
        self.limit = limit

    def __call__(self, value):
        try:
            text = self.walk(value, 0, set())
        except RecursionError:
            raise
        except Exception:
            text = "<%s object (repr failed)>" % safe_type_name(value)
        if len(text) > self.limit:
            text = text[:self.limit] + "..."
        return text

    def walk(self, value, depth, seen):
        t = type(value)
        if t is str or t is bytes:
            return repr(value[:self.limit + 1])
        if t is int:
            if value.bit_length() > 2000:
                return "<int of %d bits>" % value.bit_length()
            return repr(value)
        if t is float or t is bool or value is None:
            return repr(value)
        if t in CONTAINERS:
            return self.container(value, t, depth, seen)
        text = repr(value)
        if not isinstance(text, str):
            raise TypeError("__repr__ returned a non-string")
        return ADDRESS.sub(r"\g<1>0x?", text)

    def container(self, value, t, depth, seen):
        key = id(value)
        if key in seen:
            return "..." if t in (set, frozenset) else {list: "[...]", tuple: "(...)", dict: "{...}"}[t]
        if depth >= 6:
            return {list: "[...]", tuple: "(...)", dict: "{...}", set: "{...}", frozenset: "frozenset({...})"}[t]
        seen.add(key)
        try:
            parts = []
            size = 0
            budget = self.limit + 1
            cut = False
            if t is dict:
                items = value.items()
            elif t in (set, frozenset):
                if len(value) > 4096:
                    return "<%s of %d items>" % (t.__name__, len(value))
                items = sorted(self.walk(v, depth + 1, seen) for v in value)
            else:
                items = value
            for item in items:
                if size > budget:
                    cut = True
                    break
                if t is dict:
                    text = self.walk(item[0], depth + 1, seen) + ": " + self.walk(item[1], depth + 1, seen)
                elif t in (set, frozenset):
                    text = item
                else:
                    text = self.walk(item, depth + 1, seen)
                parts.append(text)
                size += len(text) + 2
            body = ", ".join(parts)
            if cut:
                body += ", ..."
        finally:
            seen.discard(key)
        if t is list:
            return "[" + body + "]"
        if t is tuple:
            return "(" + body + (",)" if len(parts) == 1 and not cut else ")")
        if t is dict:
            return "{" + body + "}"
        if t is set:
            return "{" + body + "}" if parts else "set()"
        return "frozenset({" + body + "})" if parts else "frozenset()"


def safe_type_name(value):
    try:
        return type(value).__name__
    except Exception:
        return "object"


def pure_literal(value, depth, budget):
    """Whether `value` is built only of exact builtin literal types (bounded walk); budget is a one-item list."""
    budget[0] -= 1
    if budget[0] < 0 or depth > 20:
        return False
    t = type(value)
    if t in (int, float, complex, str, bytes, bool) or value is None:
        return True
    if t in (list, tuple, set):
        return all(pure_literal(v, depth + 1, budget) for v in value)
    if t is dict:
        return all(pure_literal(k, depth + 1, budget) and pure_literal(v, depth + 1, budget)
                   for k, v in value.items())
    return False


def is_literal(value, text):
    """`ast.literal_eval(text) == value` with the same type, `text` being the bounded repr written in the trace."""
    try:
        if not pure_literal(value, 0, [10000]):
            return False
        if text == "set()":
            return type(value) is set and not value
        parsed = ast.literal_eval(text)
        return type(parsed) is type(value) and parsed == value
    except RecursionError:
        raise
    except Exception:
        return False


class CodeInfo(object):
    """What the tracer knows about one code object: None-like when it is not traced."""

    __slots__ = ("cid", "args", "def_line", "record", "inlined", "order")

    def __init__(self, cid, args, def_line, record, inlined, order):
        self.order = order
        self.cid = cid
        self.args = args
        self.def_line = def_line
        self.record = record
        self.inlined = inlined


def inlined_comprehensions(code):
    """Python 3.12+ inlines list/set/dict comprehensions into their parent (PEP 709): the byte ranges
    [LOAD_FAST_AND_CLEAR .. matching END_FOR] of those, so their line events are folded like older Pythons'
    separate `<listcomp>` frames."""
    if sys.version_info < (3, 12) or "LOAD_FAST_AND_CLEAR" not in OP:
        return ()
    regions = []
    start = None
    depth = 0
    for instruction in dis.get_instructions(code):
        name = instruction.opname
        if start is None:
            if name == "LOAD_FAST_AND_CLEAR":
                start = instruction.offset
                depth = 0
            continue
        if name == "FOR_ITER":
            depth += 1
        elif name == "END_FOR":
            depth -= 1
            if depth <= 0:
                regions.append((start, instruction.offset))
                start = None
    return tuple(regions)


class SourceIndex(object):
    """The function, lambda and class nodes of one file, for qualnames, def lines and enclosing headers."""

    def __init__(self, lines):
        self.lines = lines
        self.functions = {}
        try:
            tree = ast.parse("".join(lines))
        except Exception:
            return
        self.visit(tree, [])

    def header_line(self, node):
        """The `def`/`class` line of a (maybe decorated) node, 1-based."""
        if sys.version_info >= (3, 8) or not getattr(node, "decorator_list", None):
            return node.lineno
        end = node.body[0].lineno if node.body else node.lineno
        for number in range(node.lineno, end + 1):
            text = self.lines[number - 1].lstrip() if number - 1 < len(self.lines) else ""
            if re.match(r"(async\s+)?(def|class)\b", text):
                return number
        return node.lineno

    def visit(self, node, stack):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                is_class = isinstance(child, ast.ClassDef)
                name = "<lambda>" if isinstance(child, ast.Lambda) else child.name
                decorators = getattr(child, "decorator_list", [])
                first = min([d.lineno for d in decorators] + [child.lineno])
                header = self.header_line(child)
                parts = []
                for kind, parent_name, _ in stack:
                    parts.append(parent_name if kind == "class" else parent_name + ".<locals>")
                qualname = ".".join(parts + [name])
                enclosing = [line for _, _, line in stack]
                if not is_class:
                    if isinstance(child, ast.Lambda):
                        last = max(getattr(n, "end_lineno", None) or getattr(n, "lineno", 0)
                                   for n in ast.walk(child))
                        self.functions.setdefault((name, first), (qualname, header, first, last, enclosing))
                    else:
                        self.functions.setdefault((name, first), (qualname, header, first, None, enclosing))
                kind = "class" if is_class else "def"
                if isinstance(child, ast.Lambda):
                    self.visit(child, stack + [("def", name, None)])
                else:
                    # The whole header (`class Multi(\n    Base,\n):`): up to the line before the first statement.
                    if child.body:
                        first_stmt = child.body[0]
                        starts = [d.lineno for d in getattr(first_stmt, "decorator_list", [])]
                        end = max(header, min(starts + [first_stmt.lineno]) - 1)
                    else:
                        end = header
                    self.visit(child, stack + [(kind, name, (header, end))])
            else:
                self.visit(child, stack)


class Tracer(object):
    def __init__(self, opts, writer):
        self.opts = opts
        self.writer = writer
        self.repr = Repr(opts.max_repr)
        self.codes = {}
        self.sources = {}
        self.next_cid = 0
        self.next_fid = 0
        self.active = False
        self.events = 0
        self.deadline = None
        self.nodeid = None
        self.previous = None
        self.pending = None
        self.stdlib = os.path.dirname(os.path.abspath(os.__file__))
        self.self_file = os.path.abspath(__file__) if "__file__" in globals() else None
        self.exclude = ["*/site-packages/*", "*/dist-packages/*", self.stdlib + "/*"] + list(opts.exclude)
        if self.self_file:
            self.exclude.append(self.self_file)

    # -- tests -----------------------------------------------------------------------------------------------
    def start_test(self, nodeid):
        self.nodeid = nodeid
        self.writer.write({"k": "test", "nodeid": nodeid})
        self.events = 0
        self.deadline = time.time() + self.opts.time_cap
        self.active = True
        self.previous = GETTRACE()
        SETTRACE(self.global_trace)

    def stop_test(self):
        self.active = False
        try:
            SETTRACE(self.previous)
        except Exception:
            SETTRACE(None)
        self.previous = None
        if self.pending is not None:
            error, self.pending = self.pending, None
            self.fail(error)

    def end_test(self, nodeid, outcome):
        self.writer.write({"k": "test_end", "nodeid": nodeid, "outcome": outcome})

    def cap(self, reason):
        self.active = False
        self.writer.write({"k": "cap", "reason": reason, "nodeid": self.nodeid})

    def fail(self, error):
        self.active = False
        try:
            detail = "%s: %s" % (type(error).__name__, error)
        except Exception:
            detail = type(error).__name__
        try:
            self.writer.write({"k": "error", "detail": detail[:2000]})
        except Exception:
            pass

    def emit(self, record):
        if not self.writer.write(record):
            if self.writer.full:
                self.active = False
            return
        self.events += 1
        if self.events >= self.opts.max_events:
            self.cap("events")
        elif self.events % 64 == 0 and time.time() > self.deadline:
            self.cap("time")

    # -- code objects ----------------------------------------------------------------------------------------
    def info(self, code):
        try:
            return self.codes[code]
        except KeyError:
            pass
        info = self.describe(code)
        self.codes[code] = info
        return info

    def describe(self, code):
        if code.co_name in FOLDED:
            return None
        if (code.co_flags & (CO_OPTIMIZED | CO_NEWLOCALS)) != (CO_OPTIMIZED | CO_NEWLOCALS):
            return None
        filename = code.co_filename
        if not filename or filename.startswith("<"):
            return None
        path = os.path.abspath(filename)
        rel = None
        for root in self.opts.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                rel = os.path.relpath(path, root)
                break
        if rel is None:
            return None
        if self.opts.include and not any(fnmatch.fnmatch(path, g) for g in self.opts.include):
            return None
        if any(fnmatch.fnmatch(path, g) for g in self.exclude):
            return None
        lines = linecache.getlines(filename)
        if not lines:
            return None
        index = self.sources.get(path)
        if index is None:
            index = SourceIndex(lines)
            self.sources[path] = index
        found = index.functions.get((code.co_name, code.co_firstlineno))
        first = code.co_firstlineno
        if found:
            qualname, def_line, first, last, enclosing = found
        else:
            qualname, def_line, last, enclosing = code.co_name, first, None, []
        if sys.version_info >= (3, 11):
            qualname = code.co_qualname
        if last is None:
            try:
                block = inspect.getblock(lines[first - 1:])
            except Exception:
                block = lines[first - 1:first]
            last = first + len(block) - 1
        last = max(last, def_line)
        block = [l if l.endswith("\n") else l + "\n" for l in lines[first - 1:last]]
        headers = []
        for span in enclosing:
            if not span or span[0] - 1 >= len(lines):
                continue
            text = "".join(lines[span[0] - 1:span[1]])
            headers.append({"line": span[0], "text": text if text.endswith("\n") else text + "\n"})
        nargs = code.co_argcount
        names = list(code.co_varnames[:nargs])
        extra = nargs + getattr(code, "co_kwonlyargcount", 0)
        if code.co_flags & CO_VARARGS:
            names.append(code.co_varnames[extra])
        names.extend(code.co_varnames[nargs:extra])
        if code.co_flags & CO_VARKEYWORDS:
            names.append(code.co_varnames[extra + (1 if code.co_flags & CO_VARARGS else 0)])
        cid = self.next_cid
        self.next_cid += 1
        record = {"k": "code", "id": cid, "file": rel, "name": qualname, "def_line": def_line,
                  "first_line": first, "lines": block, "enclosing": headers}
        if code.co_flags & SUSPENDABLE:
            # A generator, coroutine or async generator: a call gives an object, not what its frames return.
            record["gen"] = True
        order = []
        for name in code.co_varnames + code.co_cellvars + code.co_freevars:
            if name not in order and name.isidentifier():
                order.append(name)
        return CodeInfo(cid, names, def_line, record, inlined_comprehensions(code), tuple(order))

    def use(self, info):
        if info.record is not None:
            self.writer.write(info.record)
            info.record = None

    # -- events ----------------------------------------------------------------------------------------------
    def locals_of(self, frame, info):
        """[name, repr] pairs in the code's variable order (parameters first, then locals, cells, free
        variables), the same on every Python (3.6 fills f_locals backwards), at most --max-locals."""
        out = []
        limit = self.opts.max_locals
        values = frame.f_locals
        for name in info.order:
            if len(out) >= limit:
                break
            if name in values:
                out.append([name, self.repr(values[name])])
        if len(out) < limit and len(values) > len(out):
            known = set(info.order)
            for name in list(values):
                if len(out) >= limit:
                    break
                if name not in known and isinstance(name, str) and name.isidentifier():
                    out.append([name, self.repr(values[name])])
        return out

    def global_trace(self, frame, event, arg):
        if not self.active or event != "call":
            return None
        try:
            info = self.info(frame.f_code)
            if info is None:
                return None
            current = frame.f_trace
            if isinstance(current, FrameTracer):
                local = current
                local.unwinding = False
                local.in_except = False
            else:
                local = FrameTracer(self, info, self.next_fid)
                self.next_fid += 1
            self.use(info)
            loc = self.locals_of(frame, info)
            values = frame.f_locals
            lit = True
            for name in info.args:
                if name not in values:
                    continue
                text = None
                for pair in loc:
                    if pair[0] == name:
                        text = pair[1]
                        break
                if text is None or not is_literal(values[name], text):
                    lit = False
                    break
            self.emit({"k": "call", "f": local.fid, "c": info.cid, "l": info.def_line, "loc": loc,
                       "args": info.args, "lit": lit})
            if not self.active:
                return None
            return local
        except KeyboardInterrupt:
            self.active = False
            raise
        except BaseException as error:
            # No call here: near the recursion limit any new frame raises again, out into the program.
            self.active = False
            self.pending = error
            return None


class FrameTracer(object):
    """The local trace function of one traced activation (kept by a generator frame across resumes)."""

    __slots__ = ("tracer", "info", "fid", "unwinding", "in_except")

    def __init__(self, tracer, info, fid):
        self.tracer = tracer
        self.info = info
        self.fid = fid
        self.unwinding = False
        self.in_except = False

    def __call__(self, frame, event, arg):
        tracer = self.tracer
        if not tracer.active:
            return None
        try:
            if event == "line":
                if self.unwinding and END_FINALLY is not None:
                    self.handled(frame)
                if self.info.inlined:
                    lasti = frame.f_lasti
                    for start, end in self.info.inlined:
                        if start <= lasti <= end:
                            return self
                tracer.emit({"k": "line", "f": self.fid, "c": self.info.cid, "l": frame.f_lineno,
                             "loc": tracer.locals_of(frame, self.info)})
            elif event == "return":
                kind = self.return_kind(frame, arg)
                if kind == "exit":
                    tracer.emit({"k": "exit", "f": self.fid})
                else:
                    text = tracer.repr(arg)
                    record = {"k": "return", "f": self.fid, "c": self.info.cid, "l": frame.f_lineno, "v": text,
                              "lit": is_literal(arg, text)}
                    if kind == "yield":
                        record["yield"] = True
                    tracer.emit(record)
                return None
            elif event == "exception":
                if self.loop_exhausted(frame, arg):
                    return self
                self.unwinding = True
                self.in_except = False
                tracer.emit({"k": "exception", "f": self.fid, "c": self.info.cid, "l": frame.f_lineno,
                             "v": exception_repr(tracer.repr, arg)})
            if not tracer.active:
                return None
            return self
        except KeyboardInterrupt:
            tracer.active = False
            raise
        except BaseException as error:
            tracer.active = False
            tracer.pending = error
            return None

    @staticmethod
    def loop_exhausted(frame, arg):
        """Python <= 3.9 reports the StopIteration that ends a `for` loop over a generator as an exception event at
        the loop's FOR_ITER; 3.10+ reports nothing. Nothing was raised in the program's terms: dropped, so the same
        program gives the same trace on every Python."""
        try:
            if FOR_ITER is None or not issubclass(arg[0], StopIteration):
                return False
            code = frame.f_code.co_code
            lasti = frame.f_lasti
            return 0 <= lasti < len(code) and code[lasti] == FOR_ITER
        except Exception:
            return False

    def handled(self, frame):
        """Python 3.6/3.7 only (a `return` through `with`/`finally` leaves at END_FINALLY, like a re-raise): a line
        event in an `except` body after its `except` header means the exception was caught."""
        text = linecache.getline(frame.f_code.co_filename, frame.f_lineno).lstrip()
        header = text.startswith("except") and text[6:7] in (" ", ":", "(", "\t")
        if self.in_except and not header:
            self.unwinding = False
        self.in_except = header

    def return_kind(self, frame, arg):
        code = frame.f_code.co_code
        lasti = frame.f_lasti
        op = code[lasti] if 0 <= lasti < len(code) else None
        if op in RETURN_OPS:
            return "return"
        if op in YIELD_OPS:
            return "yield"
        if YIELD_FROM is not None and 0 <= lasti + 2 < len(code) and code[lasti + 2] == YIELD_FROM:
            return "yield"
        if op == YIELD_FROM:
            return "yield"
        if arg is not None:
            return "return"
        if END_FINALLY is not None and op == END_FINALLY and not self.unwinding:
            # Python 3.6/3.7: a `return` through a `with` or `finally` block returns at END_FINALLY.
            return "return"
        return "exit"


def exception_repr(bounded, arg):
    try:
        etype, value = arg[0], arg[1]
    except Exception:
        return bounded(arg)
    if isinstance(value, BaseException):
        return bounded(value)
    name = getattr(etype, "__name__", "Exception")
    if value is None:
        return "%s()" % name
    if isinstance(value, tuple):
        return "%s%s" % (name, bounded(value))
    return "%s(%s)" % (name, bounded(value))


# -- modes -------------------------------------------------------------------------------------------------------
def run_entry(opts, tracer):
    import traceback
    import types
    path = os.path.abspath(opts.file)
    sys.path[0] = os.path.dirname(path)
    sys.argv = [path]
    try:
        expr = compile(opts.entry, "<entry>", "eval")
    except SyntaxError as error:
        sys.stderr.write("swe-env tracer: --entry is not a valid Python expression: %s\n" % (error,))
        return USAGE_EXIT
    module = types.ModuleType(ENTRY_MODULE)
    module.__file__ = path
    sys.modules[ENTRY_MODULE] = module
    try:
        with open(path, "rb") as handle:
            source = handle.read()
        exec(compile(source, path, "exec"), module.__dict__)
    except SystemExit as stop:
        return exit_code(stop)
    except KeyboardInterrupt:
        raise
    except BaseException:
        traceback.print_exc()
        return 1
    tracer.start_test("entry")
    code = 0
    outcome = "passed"
    try:
        eval(expr, module.__dict__)
    except SystemExit as stop:
        tracer.stop_test()
        code = exit_code(stop)
        outcome = "passed" if code == 0 else "failed"
    except KeyboardInterrupt:
        tracer.stop_test()
        raise
    except BaseException:
        tracer.stop_test()
        traceback.print_exc()
        code = 1
        outcome = "failed"
    finally:
        tracer.stop_test()
    tracer.end_test("entry", outcome)
    return code


def exit_code(stop):
    code = stop.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write("%s\n" % (code,))
    except Exception:
        pass
    return 1


def run_pytest(opts, tracer):
    import shutil
    script = shutil.which("pytest")
    if script:
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    elif sys.path and sys.path[0] == "":
        del sys.path[0]
    sys.argv = [script or "pytest"] + list(opts.rest)
    import pytest

    def wrapper(function):
        hookimpl = getattr(pytest, "hookimpl", None)
        if hookimpl is not None:
            return hookimpl(hookwrapper=True)(function)
        function.hookwrapper = True
        return function

    class Plugin(object):
        @wrapper
        def pytest_runtest_call(self, item):
            started = False
            try:
                tracer.start_test(item.nodeid)
                started = True
            except Exception as error:
                tracer.fail(error)
            try:
                yield
            finally:
                if started:
                    tracer.stop_test()

        @wrapper
        def pytest_runtest_makereport(self, item, call):
            outcome = yield
            try:
                report = outcome.get_result()
                if report.when == "call":
                    tracer.end_test(item.nodeid, report.outcome)
                elif report.when == "setup" and report.outcome != "passed":
                    tracer.writer.write({"k": "test", "nodeid": item.nodeid})
                    tracer.end_test(item.nodeid, "skipped" if report.outcome == "skipped" else "failed")
            except Exception as error:
                tracer.fail(error)

    code = pytest.main(list(opts.rest), plugins=[Plugin()])
    try:
        return int(code)
    except Exception:
        return 1


def main():
    opts = parse_args(sys.argv[1:])
    try:
        writer = Writer(opts.out, opts.max_bytes)
    except (IOError, OSError) as error:
        usage("cannot write --out %s: %s" % (opts.out, error))
    writer.write({"k": "start", "python": "%d.%d.%d" % sys.version_info[:3], "tracer": TRACER_VERSION})
    tracer = Tracer(opts, writer)
    code = 0
    try:
        if opts.mode == "entry":
            code = run_entry(opts, tracer)
        else:
            code = run_pytest(opts, tracer)
    finally:
        tracer.active = False
        try:
            writer.close()
        except Exception:
            pass
    sys.exit(code)


if __name__ == "__main__":
    main()
