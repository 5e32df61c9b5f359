#!/usr/bin/env python3
"""check_docs.py: docs/deploy.md still names things that exist.

The deployment guide points an operator at files, metrics, alerts and the
tests that show each behaviour. Those move (a test renamed, a metric dropped,
a manifest split), and a guide that names what is gone misleads exactly when
it is needed. This check fails, naming the line, when docs/deploy.md names:
  - a repository path (`deploy/...`, `tests/...`, `gateway/...`, ...) that
    does not exist (a trailing `*` or `<...>` part is a pattern, matched as one);
  - a metric `cascade_*` that gateway/metrics.c does not export;
  - an alert `Cascade*` that deploy/k8s/base/gateway/prometheusrule.yaml lacks;
  - a test by its quoted name, after its file (`x.test.mjs`, "name", "name"),
    that the file does not contain;
  - a link to a heading of the page (`](#6-...)`) that no heading matches.

Usage: check_docs.py REPO_ROOT
"""
import glob
import os
import re
import sys

ROOTS = ("deploy/", "tests/", "gateway/", "cache/", "policies/", "bench/", "scripts/", "classifier/",
         "common/", "engines/", "docs/", "tokenizer/")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    doc_path = os.path.join(root, "docs", "deploy.md")
    with open(doc_path, encoding="utf-8") as f:
        doc = f.read()
    lines = doc.split("\n")
    errors = []

    def line_of(pos):
        return doc.count("\n", 0, pos) + 1

    # Paths in backticks.
    for m in re.finditer(r"`([^`\s]+)`", doc):
        p = m.group(1).rstrip(".,:;")
        if not p.startswith(ROOTS):
            continue
        p = p.split(":")[0]  # `file.c:123`
        if "<" in p:
            p = p[:p.index("<")] + "*"
        if not glob.glob(os.path.join(root, p)):
            errors.append(f"line {line_of(m.start())}: no such path: {p}")

    # Metrics.
    with open(os.path.join(root, "gateway", "metrics.c"), encoding="utf-8") as f:
        metrics_src = f.read()
    exported = set(re.findall(r'family\(&b,\s*"(cascade_[a-z_]+)"', metrics_src))
    if not exported:
        errors.append("gateway/metrics.c: found no family(&b, \"cascade_...\") declarations")
    for m in re.finditer(r"\b(cascade_[a-z_]+)", doc):
        name = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        if name not in exported:
            errors.append(f"line {line_of(m.start())}: metric not exported by gateway/metrics.c: {m.group(1)}")

    # Alerts.
    rules_path = os.path.join(root, "deploy", "k8s", "base", "gateway", "prometheusrule.yaml")
    with open(rules_path, encoding="utf-8") as f:
        alerts = set(re.findall(r"alert:\s*(\S+)", f.read()))
    for m in re.finditer(r"^\| (Cascade[A-Za-z0-9]+) \|", doc, re.M):
        if m.group(1) not in alerts:
            errors.append(f"line {line_of(m.start())}: alert not in prometheusrule.yaml: {m.group(1)}")

    # Test names: "name" strings after a test file, up to the closing parenthesis.
    tests = {os.path.basename(p): p for p in glob.glob(os.path.join(root, "tests", "*", "*.test.mjs"))}
    cited = 0
    for m in re.finditer(r"`(?:tests/[a-z]+/)?([\w-]+\.test\.mjs)`", doc):
        name = m.group(1)
        if name not in tests:
            errors.append(f"line {line_of(m.start())}: no test file {name}")
            continue
        end = doc.find(")", m.end())
        nxt = re.search(r"`(?:tests/[a-z]+/)?[\w-]+\.test\.mjs`", doc[m.end():])
        if nxt and m.end() + nxt.start() < end:
            end = m.end() + nxt.start()
        with open(tests[name], encoding="utf-8") as f:
            src = f.read().replace("\\'", "'")
        for q in re.finditer(r'"([^"]+)"', doc[m.end():end]):
            text = " ".join(q.group(1).split())
            cited += 1
            if text not in " ".join(src.split()):
                errors.append(f"line {line_of(m.end() + q.start())}: {name} has no test named like \"{text}\"")
    if cited == 0:
        errors.append("found no cited test names: the check's own parsing is broken")

    # Links inside the page: each #anchor is a heading's GitHub slug.
    slugs = set()
    for h in re.finditer(r"^#+ (.+)$", doc, re.M):
        slug = re.sub(r"[^\w\- ]", "", h.group(1).strip().lower()).replace(" ", "-")
        slugs.add(slug)
    for m in re.finditer(r"\]\(#([^)]+)\)", doc):
        if m.group(1) not in slugs:
            errors.append(f"line {line_of(m.start())}: no heading for the link #{m.group(1)}")

    for e in errors:
        print(f"docs/deploy.md: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"docs/deploy.md: paths, {len(exported)} metrics, {len(alerts)} alerts and {cited} test names check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
