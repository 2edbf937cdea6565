#!/usr/bin/env python3
"""rounds.py LOG FILE: from delay-origin.py's LOG, the requests for FILE,
their bytes, and the round trips a reader waited for: the longest chain of
requests each of which came after the one before it was answered.
Prints "REQUESTS BYTES ROUNDS"."""
import sys

reqs = []
for line in open(sys.argv[1]):
    start, end, name, first, last = line.split()
    if name == sys.argv[2]:
        reqs.append((float(start), float(end), int(last) - int(first) + 1))
reqs.sort()
depth = []
for i, (start, _end, _n) in enumerate(reqs):
    before = [depth[j] for j in range(i) if reqs[j][1] <= start]
    depth.append(1 + max(before, default=0))
print(len(reqs), sum(r[2] for r in reqs), max(depth, default=0))
