"""What the benchmark report tools (bench_report.py, memory_report.py, scaleout_report.py) share:
their common arguments, reading a results TSV whose last column is esp-bench's JSON, the number
formats of the tables, and replacing one generated section of a markdown file.
"""
import argparse
import json
import os
import statistics


def arg_parser():
    """--results (the TSV a bench script wrote), --out (the markdown file), --meta key=value..."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", action="append", default=[])
    return ap


def meta_of(args):
    return dict(m.split("=", 1) for m in args.meta)


def tick_us(meta):
    """Microseconds per CPU tick of /proc/PID/stat."""
    return 1e6 / float(meta.get("clk_tck", "100"))


def rows(path, columns):
    """The lines of a results TSV with all `columns` fields (the last one may hold tabs), each
    as a list whose last field, esp-bench's JSON, is parsed; a line whose JSON does not parse
    (a run that crashed or timed out) gets None there, with the raw text as a further field."""
    for line in open(path):
        parts = line.rstrip("\n").split("\t", columns - 1)
        if len(parts) < columns:
            continue
        try:
            yield parts[:-1] + [json.loads(parts[-1])]
        except json.JSONDecodeError:
            yield parts[:-1] + [None, parts[-1]]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, digits=0):
    if x != x:  # nan
        return "-"
    return f"{x:,.{digits}f}"


def spread(xs, digits=2):
    """median [min-max]"""
    if not xs:
        return "-"
    return f"{med(xs):.{digits}f} [{min(xs):.{digits}f}-{max(xs):.{digits}f}]"


def replace_generated(path, begin, end, generated):
    """Puts `generated` (which starts with `begin` and ends with `end`) in place of the text
    between those markers in `path`; appends it when the markers are missing, and creates the
    file when it does not exist."""
    if os.path.exists(path):
        text = open(path).read()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + generated + tail
        else:
            text = text.rstrip("\n") + "\n\n" + generated + "\n"
    else:
        text = "# Benchmarks\n\n" + generated + "\n"
    with open(path, "w") as f:
        f.write(text)
