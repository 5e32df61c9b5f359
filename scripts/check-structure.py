#!/usr/bin/python3
"""check-structure.py: the dependency rules of DESIGN.md, checked on the tree
and on the built objects.

  check-structure.py SOURCE_DIR BUILD_DIR [--nm NM] [-v]

1. No file of common/, cache/, policies/, classifier/, engines/ or tokenizer/
   includes a gateway/ header: dependencies point from the gateway down,
   never up.
2. Among the gateway's object files no cycle exists. Each object's global
   definitions and undefined references are read with nm; object A depends on
   object B when A references a symbol B defines. A cycle (chat.o uses
   server.o, server.o uses chat.o) is reported with the symbols that form
   each of its edges.

Why objects and not #includes: a header can be included for a type alone,
which is no dependency, and a function can be declared locally without its
header, which is one. The linker's view (who calls or reads whom) is the one
that decides whether a module can be built, tested or replaced on its own.

Exit status: 0 when both rules hold, 1 with the violations on stdout, 2 when
the check cannot run (no objects in BUILD_DIR, nm missing): a check that
could not look must never pass.
"""
import os
import re
import subprocess
import sys

LOWER_MODULES = ("common", "cache", "policies", "classifier", "engines", "tokenizer")
SOURCE_EXTS = (".c", ".h", ".cc", ".cpp", ".cu", ".cuh", ".inc")
# #include "gateway/x.h", <gateway/x.h>, or a relative path that climbs into gateway/.
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*[<"]((?:\.\./)*gateway/[^>"]*)[>"]')


def upward_includes(src):
    """Rule 1: (path, line number, included name) for each forbidden include."""
    bad = []
    for mod in LOWER_MODULES:
        root = os.path.join(src, mod)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.endswith(SOURCE_EXTS):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for no, line in enumerate(f, 1):
                        m = INCLUDE_RE.match(line)
                        if m:
                            bad.append((os.path.relpath(path, src), no, m.group(1)))
    return bad


def object_source(obj):
    """The source an object was compiled from, from its depfile (obj + '.d',
    as Makefile and Ninja generators write it), or None."""
    dep = obj + ".d"
    if not os.path.exists(dep):
        return None
    with open(dep, encoding="utf-8", errors="replace") as f:
        text = f.read().replace("\\\n", " ")
    _, sep, rest = text.partition(": ")
    parts = rest.split()
    return os.path.realpath(parts[0]) if sep and parts else None


def gateway_objects(src, build):
    """The objects built from gateway/ sources (tests and benchmarks that live
    in the gateway's build folder are not part of the gateway)."""
    gw_src = os.path.realpath(os.path.join(src, "gateway")) + os.sep
    gw_build = os.path.realpath(os.path.join(build, "gateway")) + os.sep
    objs = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(build, "gateway")):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".o"):
                continue
            obj = os.path.join(dirpath, name)
            s = object_source(obj)
            if s is not None:
                # An object whose source is gone is a leftover of an older
                # tree: its references would be edges that no longer exist.
                if (s.startswith(gw_src) or s.startswith(gw_build)) and os.path.exists(s):
                    objs.append(obj)
            elif not re.search(r"/(test_|bench_)[^/]*\.dir/", obj):
                objs.append(obj)
    return objs


def nm_symbols(nm, objs):
    """{object: (defined globals, undefined references)}, from one nm run
    over all objects (nm -P -g -A: "file: name type [value size]")."""
    out = subprocess.run([nm, "-P", "-g", "-A", *objs], check=True, capture_output=True, text=True).stdout
    syms = {o: (set(), set()) for o in objs}
    for line in out.splitlines():
        path, sep, rest = line.rpartition(": ")
        f = rest.split()
        if not sep or len(f) < 2 or path not in syms:
            continue
        name, kind = f[0], f[1]
        if kind == "U":
            syms[path][1].add(name)
        elif kind not in ("w", "v"):  # a weak reference is no dependency
            syms[path][0].add(name)
    return syms


def label(obj, build):
    """<build>/gateway/CMakeFiles/cascade_gateway.dir/chat.c.o ->
    cascade_gateway/chat.c.o: the target and the source, short enough to read."""
    rel = os.path.relpath(obj, os.path.join(build, "gateway"))
    parts = [p[:-4] if p.endswith(".dir") else p for p in rel.split(os.sep) if p not in ("CMakeFiles", "__")]
    return "/".join(parts)


def find_cycles(nodes, edges):
    """Strongly connected components of more than one node (Tarjan), each as
    one cycle through it: a list of nodes, first repeated at the end."""
    index, low, on, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        # Iterative, so a long chain cannot hit Python's recursion limit.
        work = [(v, iter(sorted(edges.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    sccs.append(set(comp))

    for v in sorted(nodes):
        if v not in index:
            strong(v)

    cycles = []
    for comp in sccs:
        # The shortest way back to the start, by breadth-first search inside
        # the component: the cycle a reader can act on.
        start = min(comp)
        prev, frontier, found = {start: None}, [start], None
        while frontier and found is None:
            nf = []
            for u in frontier:
                for w in sorted(edges.get(u, ())):
                    if w == start:
                        found = u
                        break
                    if w in comp and w not in prev:
                        prev[w] = u
                        nf.append(w)
                if found is not None:
                    break
            frontier = nf
        path = [start]
        u = found
        while u is not None and u != start:
            path.append(u)
            u = prev[u]
        path = [start] + list(reversed(path[1:])) + [start]
        cycles.append(path)
    return cycles


def main(argv):
    args = argv[1:]
    nm = os.environ.get("NM", "nm")
    verbose = "-v" in args
    args = [a for a in args if a != "-v"]
    if "--nm" in args:
        i = args.index("--nm")
        nm = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, build = args
    failed = False

    bad = upward_includes(src)
    for path, no, inc in bad:
        print(f"{path}:{no}: includes {inc}: no module below the gateway may include gateway/ (DESIGN.md, Layout)")
    failed |= bool(bad)

    objs = gateway_objects(src, build)
    if not objs:
        print(f"check-structure: no gateway objects under {build}/gateway: build cascaded first", file=sys.stderr)
        return 2
    try:
        syms = {label(o, build): v for o, v in nm_symbols(nm, objs).items()}
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"check-structure: cannot run {nm}: {e}", file=sys.stderr)
        return 2
    owner = {}
    for node, (defined, _) in syms.items():
        for s in defined:
            owner.setdefault(s, node)
    edges, why = {}, {}
    for node, (_, undefined) in syms.items():
        for s in undefined:
            dst = owner.get(s)
            if dst is not None and dst != node:
                edges.setdefault(node, set()).add(dst)
                why.setdefault((node, dst), set()).add(s)
    if verbose:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}: {', '.join(sorted(why[(a, b)])[:3])}")
    cycles = find_cycles(set(syms), edges)
    for cyc in cycles:
        print("cycle among gateway objects: " + " -> ".join(cyc))
        for a, b in zip(cyc, cyc[1:]):
            uses = sorted(why[(a, b)])
            more = f" (+{len(uses) - 4} more)" if len(uses) > 4 else ""
            print(f"  {a} uses {b}: {', '.join(uses[:4])}{more}")
    failed |= bool(cycles)

    n_edges = sum(len(v) for v in edges.values())
    print(f"check-structure: {len(bad)} upward includes; {len(objs)} gateway objects, {n_edges} dependencies, "
          f"{len(cycles)} cycles")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
