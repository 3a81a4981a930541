#!/usr/bin/env python3
"""Lengths of Rust functions, brace-matched, over 80 lines (each #[cfg(test)] module, which
sits at the end of its file here, is left out). Usage: hack/fn-lengths.py DIR... """
import re, sys, pathlib
FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)')
def scan(path):
    lines = pathlib.Path(path).read_text().split("\n")
    out = []; i = 0; in_test = False
    while i < len(lines):
        l = lines[i]
        if re.match(r'^\s*#\[cfg\(test\)\]', l):
            break  # test modules sit at the end of files here
        m = FN.match(l)
        if m:
            depth = 0; started = False; j = i
            while j < len(lines):
                code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                code = re.sub(r"'(\\.|[^'\\])'", "''", code)
                code = code.split("//")[0]
                for ch in code:
                    if ch == '{': depth += 1; started = True
                    elif ch == '}': depth -= 1
                if started and depth == 0: break
                if not started and code.rstrip().endswith(';'): break
                j += 1
            if started: out.append((j - i + 1, f"{path}:{i+1}", m.group(6)))
            i = j + 1 if started else i + 1
            continue
        i += 1
    return out
res = []
for root in sys.argv[1:]:
    for p in sorted(pathlib.Path(root).rglob("*.rs")):
        res += scan(p)
res.sort(reverse=True)
limit = 80
over = [r for r in res if r[0] > limit]
for n, where, name in over: print(f"{n:5d}  {name:40s} {where}")
print(f"# {len(res)} functions, {len(over)} over {limit} lines; longest {res[0][0] if res else 0}")
