#!/usr/bin/env python3
"""check-dashboard.py DASHBOARD PAGE...: the Grafana dashboard spore ships
(data/grafana/spore-site.json) asks only for what spore's daemons export.

Reads the dashboard (Grafana's JSON model) and /metrics pages (Prometheus
text format); prints one line per problem: the dashboard is not a
dashboard (no title, uid or panels; a panel without a title, type or
targets; two panels with one id), or a query names a spore_* metric that
no page has a family for (a histogram's _bucket, _sum and _count belong to
its family).  Exits 1 when there is a problem, 0 otherwise.
"""
import json
import re
import sys

METRIC = re.compile(r"\bspore_[a-zA-Z0-9_]+")


def families(paths):
    types = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[0] == "#" and parts[1] == "TYPE":
                    types[parts[2]] = parts[3]
    return types


def family_of(name, types):
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            return base
    return None


def check(dashboard, types):
    problems = []
    for key in ("title", "uid", "panels"):
        if not dashboard.get(key):
            problems.append("the dashboard has no %s" % key)
    ids = set()
    for panel in dashboard.get("panels", []):
        title = panel.get("title") or "(untitled)"
        for key in ("title", "type", "targets"):
            if not panel.get(key):
                problems.append("panel '%s' has no %s" % (title, key))
        if panel.get("id") in ids:
            problems.append("panel '%s': id %s used twice" % (title, panel.get("id")))
        ids.add(panel.get("id"))
        for target in panel.get("targets", []):
            for name in METRIC.findall(target.get("expr", "")):
                if family_of(name, types) is None:
                    problems.append(
                        "panel '%s': '%s' is not exported" % (title, name)
                    )
    return problems


def main():
    if len(sys.argv) < 3:
        print("usage: check-dashboard.py DASHBOARD PAGE...", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        dashboard = json.load(f)
    problems = check(dashboard, families(sys.argv[2:]))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
