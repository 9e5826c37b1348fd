#!/usr/bin/env bash
# The PostgreSQL server's instructions per operation for rowguard's transfer, lease and cache
# statements and the bench's hand-written baselines (bench/RESULTS.md, "The server's work per
# operation", "Issue 23: cache store and invalidate as functions"). Counted by callgrind, so the
# figures do not depend on what else the machine runs.
#
#   bench/profile/server-instructions.sh [N [REGEX]]   N operations per variant (default 2000);
#                                                      only the variants whose tag matches REGEX
#                                                      (t, shed, lease, cache)
#
# How: a throwaway cluster (initdb, as the postgres user) gets rowguard's schema (schema/postgres/
# 00*.sql), 1000 funded accounts and a copy of rowguard_apply_transfer without its pinned
# search_path; then, per variant, a fresh copy of that cluster runs `postgres --single` under
# `valgrind --tool=callgrind` on a script that PREPAREs the statement once and EXECUTEs it N times in
# autocommit, and once on the PREPAREs alone: (difference) / N is the figure. A "sent as text"
# variant PREPAREs nothing: each statement is parsed and planned on every call, as a client behind a
# transaction-pooling PgBouncer sends it (unnamed). Needs root (su to postgres), valgrind and
# python3. Takes about 10 minutes for N=2000 (the cache variants alone about 4).
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-2000}"
only="${2:-.}"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
work="$(mktemp -d /tmp/rowguard-server-instructions.XXXXXX)"
chown postgres "$work"
trap 'rm -rf "$work"' EXIT
as_postgres() { su postgres -s /bin/bash -c "$*"; }

as_postgres "$pg_bin/initdb -D $work/data -A trust -U postgres --no-sync >/dev/null"
as_postgres "$pg_bin/pg_ctl -D $work/data -o '-k $work -p 28998 -c listen_addresses= -c fsync=off' -w start >/dev/null"
psql_do() { psql -q -X -v ON_ERROR_STOP=1 -h "$work" -p 28998 -U postgres "$@"; }
psql_do -c "CREATE DATABASE rg" postgres >/dev/null
for f in schema/postgres/[0-9][0-9][0-9]_*.sql; do psql_do -f "$f" rg >/dev/null; done
psql_do rg >/dev/null <<'SQL'
INSERT INTO rowguard_accounts (id, currency, balance, min_balance, version, created_at, updated_at)
SELECT 'acct-' || g, 'EUR', 1000000000000, 0, 0, now(), now() FROM generate_series(1, 1000) g;
DO $$ DECLARE d text; BEGIN
  d := pg_get_functiondef('rowguard_apply_transfer(text,text,bigint,text,text,text)'::regprocedure);
  d := replace(d, '.rowguard_apply_transfer(', '.rowguard_apply_transfer_noset(');
  EXECUTE regexp_replace(d, E'\n *SET search_path[^\n]*', '');
END $$;
CREATE TABLE bench_shedlock (name VARCHAR(64) NOT NULL PRIMARY KEY, lock_until TIMESTAMP NOT NULL,
                             locked_at TIMESTAMP NOT NULL, locked_by VARCHAR(255) NOT NULL);
INSERT INTO bench_shedlock VALUES ('bench-lock', now(), now(), 'x');
-- Cached keys for the invalidations (each then finds its row), and a one-key form of
-- rowguard_cache_invalidate to weigh its second key.
INSERT INTO rowguard_cache (key, value, expires_at, generation, size_bytes, created_at, updated_at)
SELECT 'key-' || g, decode(repeat('76', 100), 'hex'), now() + interval '1 day', 1, 100, now(), now()
  FROM generate_series(1, 1000) g;
DO $$ DECLARE d text; BEGIN
  d := pg_get_functiondef('rowguard_cache_invalidate(text,text)'::regprocedure);
  d := replace(d, '.rowguard_cache_invalidate(p_a text, p_b text)', '.rowguard_cache_invalidate_one(p_a text)');
  EXECUTE replace(d, '(VALUES (p_a), (p_b))', '(VALUES (p_a))');
END $$;
SQL
# The function's CTE as a bare statement: its body with the parameters as $1..$5.
transfer_cte="$(psql_do -At rg -c "SELECT prosrc FROM pg_proc WHERE proname = 'rowguard_apply_transfer'")"
as_postgres "$pg_bin/pg_ctl -D $work/data -w stop >/dev/null"

N="$n" ONLY="$only" WORK="$work" CTE="$transfer_cte" python3 - <<'PY'
import os, random, re
n, work = int(os.environ["N"]), os.environ["WORK"]
cte = os.environ["CTE"]
cte = cte[cte.index("WITH prior AS"):cte.rindex(";")]
cte = re.sub(r"--[^\n]*", "", cte)
for name, param in [("p_from", "$1"), ("p_to", "$2"), ("p_amount", "$3"), ("p_key", "$4"),
                    ("p_cache_a", "CAST($5 AS text)"), ("p_cache_b", "CAST($5 AS text)")]:
    cte = re.sub(r"\b%s\b" % name, param, cte)
cte = " ".join(cte.split())
raw = ("WITH d AS (UPDATE rowguard_accounts SET balance = balance - CAST($3 AS bigint), version = version + 1, "
       "updated_at = clock_timestamp() WHERE id = CAST($1 AS text) AND balance - CAST($3 AS bigint) >= min_balance "
       "RETURNING id), c AS (UPDATE rowguard_accounts SET balance = balance + CAST($3 AS bigint), "
       "version = version + 1, updated_at = clock_timestamp() WHERE id = CAST($2 AS text) AND EXISTS "
       "(SELECT 1 FROM d) RETURNING id), t AS (INSERT INTO rowguard_transfers (idempotency_key, kind, "
       "from_account, to_account, amount, currency, outcome, created_at) SELECT CAST($4 AS text), 'transfer', "
       "CAST($1 AS text), CAST($2 AS text), CAST($3 AS bigint), 'EUR', CASE WHEN EXISTS (SELECT 1 FROM d) "
       "THEN 'ok' ELSE 'insufficient_funds' END, clock_timestamp() RETURNING id, outcome), e AS (INSERT INTO "
       "rowguard_entries (transfer_id, account_id, amount, created_at) SELECT t.id, x.a, x.m, clock_timestamp() "
       "FROM t, (VALUES (CAST($1 AS text), -CAST($3 AS bigint)), (CAST($2 AS text), CAST($3 AS bigint))) "
       "AS x(a, m) WHERE t.outcome = 'ok') SELECT id, outcome FROM t")
sig = "PREPARE s(text, text, bigint, text, text) AS "
transfers = {
    "raw one-statement transfer (the bench's baseline)": sig + raw,
    "rowguard_apply_transfer as shipped": sig + "SELECT r_record_id FROM rowguard_apply_transfer($1, $2, $3, $4, $5, $5)",
    "the same function without its pinned search_path":
        sig + "SELECT r_record_id FROM rowguard_apply_transfer_noset($1, $2, $3, $4, $5, $5)",
    "the function's statement sent bare (prepared)": sig + cte,
}
rng = random.Random(1)
pairs = []
for _ in range(n):
    a = rng.randint(1, 1000)
    pairs.append((a, (a + rng.randint(1, 999) - 1) % 1000 + 1))
variants = []
for i, (label, prep) in enumerate(transfers.items()):
    ops = [f"EXECUTE s('acct-{a}', 'acct-{b}', 1, 'k-{j}', NULL)" for j, (a, b) in enumerate(pairs)]
    variants.append((f"t{i}", label, [prep], ops))
variants.append(("shed", "ShedLock-style acquire+release pair", [
    "PREPARE u(text, bigint, text) AS UPDATE bench_shedlock SET lock_until = timezone('utc', CURRENT_TIMESTAMP) + "
    "CAST($2 AS bigint) * INTERVAL '1 millisecond', locked_at = timezone('utc', CURRENT_TIMESTAMP), locked_by = $3 "
    "WHERE name = $1 AND lock_until <= timezone('utc', CURRENT_TIMESTAMP)",
    "PREPARE r(text) AS UPDATE bench_shedlock SET lock_until = timezone('utc', CURRENT_TIMESTAMP) WHERE name = $1"],
    ["EXECUTE u('bench-lock', 30000, 'host-1')\nEXECUTE r('bench-lock')"] * n))
# A new lease per acquire (the last one was released), so acquire k holds token k.
variants.append(("lease", "rowguard acquire+release pair", [
    "PREPARE a(text, text, bigint) AS SELECT * FROM rowguard_lock_acquire($1, $2, $3)",
    "PREPARE r(text, text, bigint, bigint) AS SELECT * FROM rowguard_lock_release($1, $2, $3, $4)"],
    [f"EXECUTE a('bench-lock', 'owner-1', 30000)\nEXECUTE r('bench-lock', 'owner-1', {k}, 5000)"
     for k in range(1, n + 1)]))
# The cache: what the library sent before schema step 010 and the functions of that step. A store
# writes a new key each time (the insert path) from a load that read generation 0 at a time far
# ahead (never too old, no prefix record after it); an invalidation hits a cached key.
now_ms = "CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint)"
invalidate = ("INSERT INTO rowguard_cache AS c (key, expires_at, generation, size_bytes, created_at, updated_at) "
              f"SELECT CAST($1 AS text), clock_timestamp(), ({now_ms} * 1000), 0, clock_timestamp(), "
              "clock_timestamp() WHERE 1 = 1 ON CONFLICT (key) DO UPDATE SET value = NULL, "
              "expires_at = excluded.expires_at, generation = c.generation + 1, size_bytes = 0, "
              "updated_at = excluded.updated_at")
store = ("INSERT INTO rowguard_cache AS c (key, value, expires_at, generation, size_bytes, load_ms, created_at, "
         "updated_at) SELECT $1, $2, (clock_timestamp() + CAST($4 AS bigint) * INTERVAL '1 millisecond'), "
         f"({now_ms} * 1000), $3, $6, clock_timestamp(), clock_timestamp() WHERE CAST($7 AS bigint) > {now_ms} - "
         "CAST($8 AS bigint) AND NOT EXISTS (SELECT 1 FROM rowguard_cache_prefixes p WHERE p.invalidated_at >= "
         "(TIMESTAMPTZ 'epoch' + CAST($7 AS bigint) * INTERVAL '1 millisecond') AND substr(CAST($1 AS text), 1, "
         "length(p.prefix)) = p.prefix) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
         "expires_at = excluded.expires_at, size_bytes = excluded.size_bytes, load_ms = excluded.load_ms, "
         "updated_at = excluded.updated_at WHERE c.generation = $5 AND "
         "CAST(floor(EXTRACT(EPOCH FROM c.updated_at) * 1000) AS bigint) <= CAST($7 AS bigint) RETURNING generation")
gate = "SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))) AS named_lock"
store_fn = "SELECT * FROM rowguard_cache_store($1, $2, $3, $4, $5, $6, $7, $8)"
value = "'\\x" + "76" * 100 + "'"
def bind(sql, args):  # the statement as text with its parameters in place (sent unprepared)
    for i in range(len(args), 0, -1):
        sql = sql.replace(f"${i}", args[i - 1])
    return sql
inv_keys = [f"'key-{rng.randint(1, 1000)}'" for _ in range(n)]
store_args = [[f"'new-{j}'", f"CAST({value} AS bytea)", "100", "60000", "0", "5", "4102444800000", "3600000"]
              for j in range(n)]
gate_arg = "'rowguard_cache'"
variants.append(("cache_inv_bare", "cache invalidate: the statement, prepared",
                 [f"PREPARE i(text) AS {invalidate}"], [f"EXECUTE i({k})" for k in inv_keys]))
variants.append(("cache_inv_fn", "cache invalidate: rowguard_cache_invalidate, prepared",
                 ["PREPARE i(text) AS SELECT * FROM rowguard_cache_invalidate($1, NULL)"],
                 [f"EXECUTE i({k})" for k in inv_keys]))
variants.append(("cache_inv_fn1", "cache invalidate: a one-key function, prepared",
                 ["PREPARE i(text) AS SELECT * FROM rowguard_cache_invalidate_one($1)"],
                 [f"EXECUTE i({k})" for k in inv_keys]))
variants.append(("cache_inv_bare_text", "cache invalidate: the statement, sent as text",
                 [], [bind(invalidate, [k]) for k in inv_keys]))
variants.append(("cache_inv_fn_text", "cache invalidate: rowguard_cache_invalidate, as text",
                 [], [f"SELECT * FROM rowguard_cache_invalidate({k}, NULL)" for k in inv_keys]))
variants.append(("cache_inv_fn1_text", "cache invalidate: a one-key function, as text",
                 [], [f"SELECT * FROM rowguard_cache_invalidate_one({k})" for k in inv_keys]))
store_sig = "(text, bytea, bigint, bigint, bigint, bigint, bigint, bigint)"
variants.append(("cache_store_tx", "cache store: BEGIN, gate, statement, COMMIT, prepared",
                 ["PREPARE g(text) AS " + gate, f"PREPARE s{store_sig} AS {store}"],
                 [f"BEGIN\nEXECUTE g({gate_arg})\nEXECUTE s({', '.join(a)})\nCOMMIT" for a in store_args]))
variants.append(("cache_store_fn", "cache store: rowguard_cache_store, prepared",
                 [f"PREPARE s{store_sig} AS {store_fn}"], [f"EXECUTE s({', '.join(a)})" for a in store_args]))
variants.append(("cache_store_tx_text", "cache store: BEGIN, gate, statement, COMMIT, as text",
                 [], [f"BEGIN\n{bind(gate, [gate_arg])}\n{bind(store, a)}\nCOMMIT" for a in store_args]))
variants.append(("cache_store_fn_text", "cache store: rowguard_cache_store, as text",
                 [], [bind(store_fn, a) for a in store_args]))
variants = [v for v in variants if re.search(os.environ["ONLY"], v[0])]
with open(f"{work}/variants", "w") as index:
    for tag, label, prep, ops in variants:
        open(f"{work}/{tag}.empty", "w").write("\n".join(prep) + "\n")
        open(f"{work}/{tag}.ops", "w").write("\n".join(prep + ops) + "\n")
        index.write(f"{tag}\t{label}\n")
PY

instructions() {  # $1: script; prints the run's total instruction count
  rm -rf "$work/run"
  cp -a "$work/data" "$work/run"
  as_postgres "valgrind --tool=callgrind --callgrind-out-file=$work/cg.out $pg_bin/postgres --single -D $work/run \
    -c fsync=off -c synchronous_commit=off rg < $1 > $work/out.txt 2> $work/vg.txt"
  if grep -q ERROR "$work/out.txt"; then
    grep -m3 ERROR "$work/out.txt" >&2
    exit 1
  fi
  awk '/Collected/ {print $4}' "$work/vg.txt"
}
printf '%-55s %12s\n' "operation ($n each, PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'))" "instr/op"
while IFS=$'\t' read -r tag label; do
  base="$(instructions "$work/$tag.empty")"
  all="$(instructions "$work/$tag.ops")"
  printf '%-55s %12d\n' "$label" $(((all - base) / n))
done < "$work/variants"
