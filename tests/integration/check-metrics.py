#!/usr/bin/env python3
"""check-metrics.py FILE: the Prometheus naming conventions spore keeps.

Reads a /metrics page (text format 0.0.4) and prints one line per problem:
every family has one HELP and one TYPE line before its samples; a
counter's name ends in _total; a family's samples are contiguous (once
another family's sample or header follows, the family is not seen again).
Exits 1 when there is a problem, 0 otherwise.  Needs only the standard
library, so that the test fails without promtool too.
"""
import re
import sys

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+\S+(\s+\S+)?$")
SUFFIXES = ("_bucket", "_sum", "_count")


def family_of(name, types):
    """the family a sample belongs to: histogram and summary samples carry
    a suffix"""
    if name in types:
        return name
    for s in SUFFIXES:
        if name.endswith(s) and types.get(name[: -len(s)]) in (
            "histogram",
            "summary",
        ):
            return name[: -len(s)]
    return name


def check(lines):
    problems = []
    helps, types, samples = {}, {}, {}
    finished = set()  # families another family has followed
    current = None

    def enter(family, lineno):
        nonlocal current
        if family == current:
            return
        if family in finished:
            problems.append(
                "line %d: family '%s' continues after another family"
                % (lineno, family)
            )
        if current is not None:
            finished.add(current)
        current = family

    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                table = helps if parts[1] == "HELP" else types
                if name in table:
                    problems.append(
                        "line %d: second %s line of '%s'" % (lineno, parts[1], name)
                    )
                table[name] = parts[3] if len(parts) > 3 else ""
                if name in samples:
                    problems.append(
                        "line %d: %s of '%s' after its samples"
                        % (lineno, parts[1], name)
                    )
                enter(name, lineno)
            continue
        m = SAMPLE.match(line)
        if not m:
            problems.append("line %d: not a sample: %r" % (lineno, line))
            continue
        family = family_of(m.group(1), types)
        samples.setdefault(family, lineno)
        enter(family, lineno)

    for family in sorted(set(samples) | set(helps) | set(types)):
        if family not in helps:
            problems.append("family '%s' has no HELP line" % family)
        if family not in types:
            problems.append("family '%s' has no TYPE line" % family)
        if types.get(family) == "counter" and not family.endswith("_total"):
            problems.append("counter '%s' does not end in _total" % family)
    return problems


def main():
    with open(sys.argv[1]) as f:
        problems = check(f.readlines())
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
