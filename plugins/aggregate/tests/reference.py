"""Independent batch computation of the aggregate plugin's output, for the cross-check test.

Usage: python3 reference.py CONFIG.json EVENTS.ndjson > rows.json
Each event is {"time_ms": ..., "doc": {...}}. Computes every window over all events at once (no watermarks,
no state), the way a SQL GROUP BY would, and prints the rows sorted by (window_end, window_start, group).
"""
import json
import sys
from collections import defaultdict


def get(doc, path):
    node = doc
    for seg in path.split("."):
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
            node = node[int(seg)]
        else:
            return None
    return node


def measure(m, events):
    values = []
    for t, seq, doc in events:
        f = m.get("filter")
        if f is not None and get(doc, f["path"]) != f["equals"]:
            continue
        v = get(doc, m["path"]) if "path" in m else True
        if v is None:
            continue
        values.append((t, seq, v))
    op = m["op"]
    nums = [v for _, _, v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if op == "count":
        return len(values)
    if op == "sum":
        sign = m.get("sign")
        nums = [v for v in nums if sign is None or (sign == "positive" and v > 0) or (sign == "negative" and v < 0)]
        return sum(nums)
    if op == "min":
        return min(nums) if nums else None
    if op == "max":
        return max(nums) if nums else None
    if op == "distinct_count":
        return len({json.dumps(v) for _, _, v in values})
    if op == "first":
        return min(values, key=lambda x: (x[0], x[1]))[2] if values else None
    if op == "last":
        return max(values, key=lambda x: (x[0], x[1]))[2] if values else None
    raise ValueError(op)


def main():
    config = json.load(open(sys.argv[1]))
    events = []
    for seq, line in enumerate(open(sys.argv[2]), start=1):
        e = json.loads(line)
        events.append((e["time_ms"], seq, e["doc"]))
    groups = defaultdict(list)
    for e in events:
        groups[tuple(json.dumps(get(e[2], p)) for p in config.get("group_by", []))].append(e)
    w = config["window"]
    windows = []  # (start, end, group, events)
    for group, evs in groups.items():
        if w["kind"] == "session":
            evs = sorted(evs, key=lambda e: (e[0], e[1]))
            current = [evs[0]]
            for e in evs[1:]:
                if e[0] - current[-1][0] > w.get("gap_ms", 1_800_000):
                    windows.append((current[0][0], current[-1][0], group, current))
                    current = []
                current.append(e)
            windows.append((current[0][0], current[-1][0], group, current))
        else:
            size = w.get("size_ms", 600_000)
            slide = w.get("slide_ms", size)
            by_start = defaultdict(list)
            for e in evs:
                start = e[0] // slide * slide
                while start + size > e[0]:
                    by_start[start].append(e)
                    start -= slide
            windows.extend((s, s + size, group, es) for s, es in by_start.items())
    rows = []
    for start, end, group, evs in sorted(windows, key=lambda x: (x[1], x[0], x[2])):
        row = {"window_start": start, "window_end": end}
        for path, g in zip(config.get("group_by", []), group):
            row[path.replace(".", "_")] = json.loads(g)
        for m in config["measures"]:
            row[m["name"]] = measure(m, evs)
        rows.append(row)
    json.dump(rows, sys.stdout)


main()
