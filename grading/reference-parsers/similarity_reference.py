#!/usr/bin/env python3
"""Reference side of swe-env's similarity differential test (stdlib only).

Reads JSON lines on stdin and writes one JSON line per input line on stdout:
  {"kind": "ratio", "a": str, "b": str}
      -> {"ratio": repr(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio())}
  {"kind": "patch", "pred": str, "gold": str}
      -> {"reward": repr(float), "files": [[path, repr(float)], ...], "error": str | null}

The "patch" kind re-implements, independently of the Rust code, the per-file diff body rule
documented in grading/src/similarity/patch.rs, then applies SWE-RL's rule: union of files,
0.0 for a file on one side only, ratio otherwise, mean in path order (left-to-right addition);
-1.0 when the predicted patch is empty or unparsable. Floats travel as repr() strings so the
comparison is bit for bit.
"""

import difflib
import json
import re
import sys

HUNK = re.compile(r"^@@ (-[0-9]+(?:,[0-9]+)?) (\+[0-9]+(?:,[0-9]+)?) @@")


class ParseError(Exception):
    pass


def count(rng):
    body = rng[1:]
    return int(body.split(",")[1]) if "," in body else 1


def header_path(rest):
    path = rest.split("\t")[0].rstrip("\r")
    if path == "/dev/null":
        return None
    if path.startswith("a/") or path.startswith("b/"):
        path = path[2:]
    return path


def bodies(patch):
    if not patch.strip():
        raise ParseError("empty")
    lines = (patch[:-1] if patch.endswith("\n") else patch).split("\n")
    parts = {}
    current = None
    old_left = new_left = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if old_left > 0 or new_left > 0:
            first = line[:1]
            if first in (" ", "") and old_left > 0 and new_left > 0:
                old_left -= 1
                new_left -= 1
            elif first == "-" and old_left > 0:
                old_left -= 1
            elif first == "+" and new_left > 0:
                new_left -= 1
            elif first == "\\":
                continue
            else:
                raise ParseError("bad hunk body")
            if current is not None:
                parts.setdefault(current, []).append(line)
            continue
        if line.startswith("@@"):
            m = HUNK.match(line)
            if not m:
                raise ParseError("bad hunk header")
            if current is None:
                raise ParseError("hunk without file")
            parts.setdefault(current, []).append(f"@@ {m.group(1)} {m.group(2)} @@")
            old_left, new_left = count(m.group(1)), count(m.group(2))
        elif line.startswith("diff --git "):
            rest = line[len("diff --git "):]
            pos = rest.rfind(" b/")
            current = rest[pos + 3:].rstrip("\r") if pos >= 0 else None
        elif line.startswith("--- ") and i < len(lines) and lines[i].startswith("+++ "):
            new = header_path(lines[i][4:])
            current = new if new is not None else header_path(line[4:])
            i += 1
    if old_left > 0 or new_left > 0:
        raise ParseError("truncated hunk")
    if not parts:
        raise ParseError("no hunks")
    return {path: "\n".join(p) for path, p in parts.items()}


def ratio(a, b):
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def patch_reward(pred, gold):
    gold_bodies = bodies(gold)
    try:
        pred_bodies = bodies(pred)
    except ParseError as e:
        return {"reward": repr(-1.0), "files": [], "error": str(e)}
    files = []
    total = 0.0
    for path in sorted(set(gold_bodies) | set(pred_bodies)):
        if path in gold_bodies and path in pred_bodies:
            sim = ratio(pred_bodies[path], gold_bodies[path])
        else:
            sim = 0.0
        files.append([path, repr(sim)])
        total += sim
    return {"reward": repr(total / len(files)), "files": files, "error": None}


def main():
    for line in sys.stdin:
        request = json.loads(line)
        if request["kind"] == "ratio":
            out = {"ratio": repr(ratio(request["a"], request["b"]))}
        else:
            out = patch_reward(request["pred"], request["gold"])
        sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
