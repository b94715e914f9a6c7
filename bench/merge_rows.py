"""Merges the rows of session.json files (bench/collect_session.py's output of a gpu_bench.sh call)
into a results file such as bench/results/h200.json: a row replaces the one with the same "work"
and baseline (`key`; each row was measured in one call beside its baseline, so rows are replaced
whole, never field by field); rows of other works are kept as they are. Only rows measured on a
device whose name contains --device are taken (default H200: h200.json holds H200 rows only).

Usage: python3 bench/merge_rows.py RESULTS.json --measured "TEXT" SESSION.json [SESSION.json ...]
  --measured: what the new rows' "measured" field says (date, session, commit, results folder).
  --device: the device name part the rows must carry (default H200).
  --dry-run: print the merged file instead of writing it.
Prints one line per replaced or added row."""
import argparse
import json
import re
import sys


def key(row):
    """A row's identity: its work and its baseline, less a trailing "(...)" (the attention rows
    name the SDPA backend that was best in their call, which may differ between calls)."""
    baseline = re.sub(r"\s*\([^()]*\)$", "", row.get("baseline") or "")
    return (row.get("work"), baseline)


def ratio(row):
    return row.get("time_ratio", row.get("throughput_ratio"))


def merge(old, new, device, measured):
    """The merged rows (old order, new rows of unknown keys appended) and a log of changes."""
    out = list(old)
    index = {key(r): i for i, r in enumerate(out)}
    log = []
    for row in new:
        if device not in (row.get("device") or ""):
            log.append(f"skipped {key(row)}: device {row.get('device')!r} is not {device}")
            continue
        row = dict(row, measured=measured)
        k = key(row)
        if k in index:
            log.append(f"replaced {k}: ratio {ratio(out[index[k]])} -> {ratio(row)}")
            out[index[k]] = row
        else:
            log.append(f"added {k}: ratio {ratio(row)}")
            index[k] = len(out)
            out.append(row)
    return out, log


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("sessions", nargs="+")
    p.add_argument("--measured", required=True)
    p.add_argument("--device", default="H200")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    try:
        with open(a.results) as f:
            old = json.load(f)
    except FileNotFoundError:
        old = []
    new = []
    for s in a.sessions:
        with open(s) as f:
            rows = json.load(f)
        if not isinstance(rows, list):
            sys.exit(f"{s}: expected a list of rows (bench/collect_session.py's output)")
        new.extend(rows)
    rows, log = merge(old, new, a.device, a.measured)
    print("\n".join(log), file=sys.stderr)
    text = json.dumps(rows, indent=1) + "\n"
    if a.dry_run:
        sys.stdout.write(text)
    else:
        with open(a.results, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
