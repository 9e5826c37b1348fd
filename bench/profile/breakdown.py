#!/usr/bin/env python3
"""Client instructions per operation by where they are spent, from callgrind output files of
rowguard-client-path (bench/RESULTS.md, "Issue 23: the client path").

  bench/profile/breakdown.py OPS FILE...   one column per file; OPS is the --ops of the runs

Exclusive instruction counts (Ir) of each function are put in the first bucket whose rule matches
its object file or function name; inlined code counts where callgrind puts it, in the function it
was inlined into."""
import re
import subprocess
import sys

# (bucket, object pattern, function pattern): the first match wins.
RULES = [
    ("libpq", r"libpq\.so", None),
    ("libpqxx", r"libpqxx", None),
    ("malloc/free", r"libc\.so|libstdc\+\+", r"malloc|free|operator new|operator delete|_int_|tcache|cfree"),
    ("fmt", r"libfmt", None),
    ("libc, libstdc++ (memcpy, strtol, mutex, ...)", r"libc\.so|libstdc\+\+|ld-linux", None),
    ("libpqxx templates (params)", None, r"pqxx::"),
    ("rowguard: statement lookup", None, r"PgStatements::name_for"),
    ("rowguard: SQL text classification", None,
     r"effect_of|first_keyword|savepoint_statement|is_transaction_control"),
    ("rowguard: parameters and result rows", None,
     r"PgStatements::run|PgStatements::execute|detail::cell|rowguard::Row|std::vector<rowguard::Row|"
     r"std::vector<std::variant|rowguard::Result|_Variant_storage|__do_visit|to_chars|Params::"),
    ("rowguard: pool", None, r"Pool::|SessionLease|Backend::borrow"),
    ("rowguard: metrics", None, r"metrics::|instruments::|Measure"),
    ("rowguard: retries", None, r"with_retries|retrying"),
    ("rowguard: session (errors, replication check)", None, r"PgSession|Session::"),
    ("rowguard: feature code (locks, ledger, cache)", None, r"Lock|Lease|Ledger|Cache|heartbeat|new_owner|wake"),
    ("benchmark loop (baseline's own code)", None, r"bench::|measured|_Function_handler|pick_pair|client_path"),
    ("other", None, None),
]
LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*?):(.*?)(?: \[(.*)\])?$")


def buckets(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", path],
                         capture_output=True, text=True, check=True).stdout
    sums = {}
    started = False
    for line in out.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        if line.startswith("----") or line.startswith("-- "):
            if sums:
                break
            continue
        m = LINE.match(line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        fn, obj = m.group(3), m.group(4) or ""
        for name, obj_re, fn_re in RULES:
            if obj_re and not re.search(obj_re, obj):
                continue
            if fn_re and not re.search(fn_re, fn):
                continue
            sums[name] = sums.get(name, 0) + ir
            break
    return sums


def main():
    ops = int(sys.argv[1])
    files = sys.argv[2:]
    cols = [buckets(f) for f in files]
    names = [f.rsplit("/", 1)[-1].removesuffix(".out") for f in files]
    print("| instructions per op | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(files))
    for name, _, _ in RULES:
        vals = [c.get(name, 0) / ops for c in cols]
        if any(v >= 50 for v in vals):
            print(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in vals) + " |")
    print("| **total** | " + " | ".join(f"**{sum(c.values()) / ops:,.0f}**" for c in cols) + " |")


main()
