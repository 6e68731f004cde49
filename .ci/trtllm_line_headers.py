#!/usr/bin/env python3
"""Write kvxfer's compat headers as one release line alone would have them:
every `#if KVXFER_TRTLLM_LINE ...` resolved for that line and kvxferLine.h
gone, as TensorRT-LLM's own headers of that line look to the build (which
then has to find the line from what they declare).

    trtllm_line_headers.py <compat include dir> <line, e.g. 1.2> <output include dir>
"""
import pathlib
import re
import sys

CONDITION = re.compile(r"#\s*(if|elif)\s+KVXFER_TRTLLM_LINE\s*(>=|<|==|!=)\s*(\d+)")
OPS = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


def resolve(text, line):
    out = []
    # One entry per open #if: [is a line condition, taking this branch, a branch was taken].
    stack = []
    for raw in text.splitlines(keepends=True):
        stripped = raw.strip()
        if "kvxferLine.h" in stripped and stripped.startswith("#include"):
            continue
        m = CONDITION.match(stripped)
        if m and m.group(1) == "if":
            holds = OPS[m.group(2)](line, int(m.group(3)))
            stack.append([True, holds, holds])
            continue
        if m and m.group(1) == "elif" and stack and stack[-1][0]:
            holds = not stack[-1][2] and OPS[m.group(2)](line, int(m.group(3)))
            stack[-1][1] = holds
            stack[-1][2] = stack[-1][2] or holds
            continue
        if re.match(r"#\s*(if|ifdef|ifndef)\b", stripped):
            stack.append([False, True, True])
        elif re.match(r"#\s*else\b", stripped) and stack and stack[-1][0]:
            stack[-1][1] = not stack[-1][2]
            continue
        elif re.match(r"#\s*endif\b", stripped) and stack:
            if stack.pop()[0]:
                continue
        if all(entry[1] for entry in stack):
            out.append(raw)
    if stack:
        raise SystemExit("unbalanced #if in a compat header")
    return "".join(out)


def main():
    source, line_name, target = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
    major, minor = (int(p) for p in line_name.split("."))
    line = major * 100 + minor
    for header in sorted(source.rglob("*.h")):
        if header.name == "kvxferLine.h":
            continue
        out = target / header.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(resolve(header.read_text(), line))


if __name__ == "__main__":
    main()
