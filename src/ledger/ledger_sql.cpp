#include "ledger/ledger_sql.hpp"

#include <string_view>

#include <fmt/format.h>

#include "base/sql_text.hpp"

#include "cache/cache_sql.hpp"

namespace rowguard::detail {

namespace {
// TransferDetails as columns of a transfer or a hold (alias.code ...): code, reference, metadata
// as text, event time in epoch ms (NULL for none); records from before step 011 read as none.
std::string details_columns(const Dialect& d, std::string_view alias) {
  // code as bigint: SOCI reads a 32-bit integer column as a type of its own, which rowguard refuses.
  return fmt::format("CAST({a}code AS bigint), {a}reference, CAST({a}metadata AS text), {ms}", fmt::arg("a", alias),
                     fmt::arg("ms", d.timestamp_to_ms(fmt::format("{}event_at", alias))));
}

// The record of an idempotency key in either table (key_record_columns). $1 is the key (param names
// another placeholder).
std::string key_record_sql(const Backend& backend, std::string_view param = "$1") {
  return fmt::format(
      "SELECT id, kind, from_account, to_account, amount, outcome, global_txid, reverses, hold_id, "
      "CAST(NULL AS bigint) AS timeout_ms, {details} FROM {tr} WHERE idempotency_key = {p} UNION ALL "
      "SELECT id, 'hold', from_account, to_account, amount, state, NULL, NULL, NULL, timeout_ms, {details} "
      "FROM {holds} WHERE idempotency_key = {p} LIMIT 1",
      fmt::arg("tr", backend.table("transfers")), fmt::arg("holds", backend.table("holds")), fmt::arg("p", param),
      fmt::arg("details", details_columns(backend.dialect(), "")));
}

// A new transfer's or entry's id (`table` is "transfers" or "entries"), above every id the table
// ever had: ids never go back, so an exported statement or a reversal's reference names one
// transfer forever. SQLite's next_id is MAX(id) + 1 over the table given: here over the live rows
// and the high-water mark archive() records in <prefix>id_high_water before it moves rows out
// (two index lookups), so emptying the archive tables cannot bring an id back. PostgreSQL's
// sequence never goes back anyway.
std::string next_id_above_high_water(const Backend& backend, const std::string& table) {
  return backend.dialect().next_id(
      fmt::format("(SELECT MAX(id) AS id FROM {} UNION ALL SELECT last_id FROM {} WHERE name = '{}')",
                  backend.table(table), backend.table("id_high_water"), table));
}

// An entry's columns as the journal's queries return them (JournalEntry), from the entries as x.
constexpr const char* entry_columns = "x.id, x.account_id, x.amount, x.balance_after, x.account_version";

// The page of HistoryStatements::history: the page of entries first, then their transfers and entries.
std::string history_page_sql(const Dialect& d, const std::string& tr, const std::string& en, const std::string& columns,
                             bool newest_first, bool window) {
  const char* cmp = newest_first ? "<" : ">";
  const char* dir = newest_first ? "DESC" : "ASC";
  const std::string page =
      window ? fmt::format(
                   "SELECT e.id AS eid, e.transfer_id AS tid, e.amount AS change, e.balance_after AS running FROM {} e "
                   "JOIN {} t ON "
                   "t.id = e.transfer_id WHERE e.account_id = $1 AND e.id {} $2 AND t.created_at >= {} AND "
                   "t.created_at < {} ORDER BY e.id {} LIMIT $5",
                   en, tr, cmp, d.ms_to_timestamp("$3"), d.ms_to_timestamp("$4"), dir)
             : fmt::format(
                   "SELECT e.id AS eid, e.transfer_id AS tid, e.amount AS change, e.balance_after AS running FROM {} e "
                   "WHERE e.account_id = $1 AND e.id {} $2 ORDER BY e.id {} LIMIT $3",
                   en, cmp, dir);
  return fmt::format(
      "SELECT {cols}, p.eid, p.change, p.running, {entry} FROM ({page}) p "
      "JOIN {tr} t ON t.id = p.tid JOIN {en} x ON x.transfer_id = p.tid ORDER BY p.eid {dir}, x.id",
      fmt::arg("cols", columns), fmt::arg("page", page), fmt::arg("entry", entry_columns), fmt::arg("tr", tr),
      fmt::arg("en", en), fmt::arg("dir", dir));
}

// The page of HistoryStatements::transfers.
std::string transfer_page_sql(const Dialect& d, const std::string& tr, const std::string& en,
                              const std::string& columns, const TransferFilter& f) {
  // Parameters are numbered in the order TransferFilter lists them: PostgreSQL refuses a statement
  // with a parameter it cannot type because nothing uses it, so only the filters asked for are there.
  std::size_t n = 2;  // $1 cursor, $2 limit
  auto next = [&n] { return fmt::format("${}", ++n); };
  const std::string account = f.by_account ? next() : std::string();
  std::string w;
  if (f.window) {
    const std::string since = next(), until = next();
    w += fmt::format(" AND created_at >= {} AND created_at < {}", d.ms_to_timestamp(since), d.ms_to_timestamp(until));
  }
  // "code > 0" matches the partial index's predicate (step 011), which transfers without a code stay out of.
  if (f.code) w += fmt::format(" AND code = {} AND code > 0", next());
  if (f.reference) w += fmt::format(" AND reference = {}", next());
  if (f.metadata_keys > 0 && d.has_json_containment()) {
    w += fmt::format(" AND metadata @> CAST({} AS jsonb)", next());
  } else {
    for (std::size_t k = 0; k < f.metadata_keys; ++k) {
      const std::string path = next(), value = next();
      // json_extract gives true and false as 1 and 0, and an array or object as its JSON text: the
      // types say which is which, so {"x":true} never matches {"x":1}, nor {"x":"[1]"} a stored
      // {"x":[1]}, as in jsonb. The value is bound as the caller spelled it: SQLite reads 1230 as an
      // INTEGER and 123e1 as a REAL, which it compares with a stored 1230 only as a double.
      w += fmt::format(
          " AND json_extract(metadata, {p}) = json_extract({v}, '$') AND "
          "(json_type(metadata, {p}) IN ('true', 'false')) = (json_type({v}) IN ('true', 'false')) AND "
          "(json_type(metadata, {p}) = 'text') = (json_type({v}) = 'text')",
          fmt::arg("p", path), fmt::arg("v", value));
    }
  }
  const std::string page =
      f.by_account ? fmt::format(
                         "SELECT id FROM (SELECT id FROM {tr} WHERE from_account = {a} AND id < $1{w} ORDER BY id "
                         "DESC LIMIT $2) f "
                         "UNION SELECT id FROM (SELECT id FROM {tr} WHERE to_account = {a} AND id < $1{w} ORDER BY id "
                         "DESC LIMIT $2) g",
                         fmt::arg("tr", tr), fmt::arg("a", account), fmt::arg("w", w))
                   : fmt::format("SELECT id FROM {} WHERE id < $1{} ORDER BY id DESC LIMIT $2", tr, w);
  // The union of the arms may hold up to 2 * limit ids: the outer LIMIT keeps the newest.
  const std::string ids = fmt::format("SELECT id FROM ({}) u ORDER BY id DESC LIMIT $2", page);
  // Containment's generic plan guesses how many transfers match and may walk the whole table for a
  // rare value: planned per call instead (sql_text.hpp, plan_each_call_marker).
  const std::string_view lead = f.metadata_keys > 0 && d.has_json_containment() ? plan_each_call_marker : "";
  if (!f.with_entries)
    return fmt::format("{}SELECT {} FROM {} t WHERE t.id IN ({}) ORDER BY t.id DESC", lead, columns, tr, ids);
  return fmt::format(
      "{}SELECT {}, {} FROM {} t LEFT JOIN {} x ON x.transfer_id = t.id "
      "WHERE t.id IN ({}) ORDER BY t.id DESC, x.id",
      lead, columns, entry_columns, tr, en, ids);
}

}  // namespace

AccountStatements::AccountStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string acc = backend.table("accounts");
  const std::string now = d.now_timestamp();
  open = fmt::format(
      "INSERT INTO {} (id, currency, balance, min_balance, version, created_at, updated_at) "
      "VALUES ($1, $2, 0, $3, 0, {now}, {now}) ON CONFLICT (id) DO NOTHING RETURNING id",
      acc, fmt::arg("now", now));
  const std::string live_held = fmt::format(
      "CASE WHEN a.held = 0 THEN 0 ELSE (SELECT CAST(COALESCE(SUM(h.amount), 0) AS bigint) FROM {} h "
      "WHERE h.from_account = a.id AND h.state = 'held' AND h.expires_at > {}) END",
      backend.table("holds"), now);
  const std::string columns = fmt::format("a.id, a.currency, a.balance, a.min_balance, a.version, {}", live_held);
  get = fmt::format("SELECT {} FROM {} a WHERE a.id = $1", columns, acc);
  list = fmt::format("SELECT {} FROM {} a ORDER BY a.id", columns, acc);
  currencies = fmt::format(
      "SELECT currency, count(*), CAST(COALESCE(SUM(balance), 0) AS bigint), CAST(COALESCE(SUM(held), 0) AS bigint) "
      "FROM {} GROUP BY currency ORDER BY currency",
      acc);
  largest = fmt::format("SELECT {} FROM {} a ORDER BY a.balance DESC, a.id LIMIT $1", columns, acc);
}

TransferStatements::TransferStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string acc = backend.table("accounts");
  const std::string tr = backend.table("transfers");
  const std::string en = backend.table("entries");
  const std::string now = d.now_timestamp();
  const std::string for_update = d.for_update();  // "" on SQLite, whose write transactions hold the write lock
  find_key = key_record_sql(backend);
  lock_one = fmt::format("SELECT id, currency, balance, min_balance, held FROM {} WHERE id = $1{}", acc, for_update);
  lock_two = fmt::format("SELECT id, currency, balance, min_balance, held FROM {} WHERE id IN ($1, $2) ORDER BY id{}",
                         acc, for_update);
  debit = fmt::format(
      "UPDATE {} SET balance = balance - $2, version = version + 1, updated_at = {} "
      "WHERE id = $1 AND balance - $2 - held >= min_balance",
      acc, now);
  credit = fmt::format("UPDATE {} SET balance = balance + $2, version = version + 1, updated_at = {} WHERE id = $1",
                       acc, now);
  record = fmt::format(
      "INSERT INTO {} (id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, reverses, "
      "global_txid, created_at, code, reference, metadata, event_at) VALUES ({}, $1, $2, $3, $4, $5, $6, $7, $8, $9, "
      "{}, $10, $11, $12, {}) RETURNING id",
      tr, next_id_above_high_water(backend, "transfers"), now, d.ms_to_timestamp("$13"));
  lock_original = fmt::format(
      "SELECT id, from_account, to_account, amount FROM {} WHERE idempotency_key = $1 AND kind = 'transfer' AND "
      "outcome = 'ok'{}",
      tr, for_update);
  refunded =
      fmt::format("SELECT CAST(COALESCE(SUM(amount), 0) AS bigint) FROM {} WHERE reverses = $1 AND outcome = 'ok'", tr);
  update = fmt::format(
      "UPDATE {} SET min_balance = $3, version = version + 1, updated_at = {} WHERE id = $1 AND version = $2", acc,
      now);
  // The function of schema step 008 (schema/postgres/008_server_statements.sql), whose inner
  // statement the server plans once per session.
  if (d.has_server_statements()) one_statement_transfer = backend.function_call("apply_transfer", 10);
  if (d.has_server_statements()) batch = backend.function_call("apply_batch", 11);
  prune = fmt::format("UPDATE {} SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND created_at < {}", tr,
                      d.timestamp_plus_ms(now, "$1"));
  // Each entry records its account's balance and version after it, read from the account row this
  // transaction has just updated (and holds locked): the same statement, no round trip more.
  const auto after = [&acc](std::string_view account) {
    return fmt::format("(SELECT balance FROM {a} WHERE id = {p}), (SELECT version FROM {a} WHERE id = {p})",
                       fmt::arg("a", acc), fmt::arg("p", account));
  };
  entry = fmt::format(
      "INSERT INTO {} (id, transfer_id, account_id, amount, created_at, balance_after, account_version) "
      "VALUES ({}, $1, $2, $3, {}, {})",
      en, next_id_above_high_water(backend, "entries"), now, after("$2"));
  entry_balances = fmt::format(
      "SELECT (SELECT balance_after FROM {en} WHERE transfer_id = $1 AND amount < 0), "
      "(SELECT balance_after FROM {en} WHERE transfer_id = $1 AND amount > 0)",
      fmt::arg("en", en));
  invalidate_two = cache_invalidate_two_sql(backend);
  if (d.has_single_writer()) {
    // The key's record as key_record_sql gives it (a transfer's first: holds are probed only
    // without one), both accounts and the next ids, in one row; every join is on a unique key.
    lookup = fmt::format(
        "SELECT COALESCE(k.id, h.id), CASE WHEN k.id IS NOT NULL THEN k.kind WHEN h.id IS NOT NULL THEN 'hold' END, "
        "CASE WHEN k.id IS NOT NULL THEN k.from_account ELSE h.from_account END, "
        "CASE WHEN k.id IS NOT NULL THEN k.to_account ELSE h.to_account END, "
        "CASE WHEN k.id IS NOT NULL THEN k.amount ELSE h.amount END, "
        "CASE WHEN k.id IS NOT NULL THEN k.outcome ELSE h.state END, k.global_txid, k.reverses, k.hold_id, "
        "h.timeout_ms, CASE WHEN k.id IS NOT NULL THEN k.code ELSE h.code END, "
        "CASE WHEN k.id IS NOT NULL THEN k.reference ELSE h.reference END, "
        "CASE WHEN k.id IS NOT NULL THEN k.metadata ELSE h.metadata END, "
        "CASE WHEN k.id IS NOT NULL THEN k.event_at ELSE h.event_at END, f.currency, f.balance, f.min_balance, f.held, "
        "t.currency, t.balance, t.min_balance, t.held, "
        "{next_transfer}, {next_entry} FROM (SELECT 1) AS one "
        "LEFT JOIN {tr} k ON k.idempotency_key = $1 LEFT JOIN {holds} h ON k.id IS NULL AND h.idempotency_key = $1 "
        "LEFT JOIN {acc} f ON f.id = $2 LEFT JOIN {acc} t ON t.id = $3",
        fmt::arg("next_transfer", next_id_above_high_water(backend, "transfers")),
        fmt::arg("next_entry", next_id_above_high_water(backend, "entries")), fmt::arg("tr", tr),
        fmt::arg("holds", backend.table("holds")), fmt::arg("acc", acc));
    record_as = fmt::format(
        "INSERT INTO {} (id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, reverses, "
        "global_txid, created_at, code, reference, metadata, event_at) VALUES ($14, $1, $2, $3, $4, $5, $6, $7, $8, "
        "$9, {}, $10, $11, $12, {})",
        tr, now, d.ms_to_timestamp("$13"));
    entry_as = fmt::format(
        "INSERT INTO {} (id, transfer_id, account_id, amount, created_at, balance_after, account_version) "
        "VALUES ($1, $2, $3, $4, {}, {})",
        en, now, after("$3"));
    entry_pair = fmt::format(
        "INSERT INTO {} (id, transfer_id, account_id, amount, created_at, balance_after, account_version) "
        "VALUES ($1, $2, $3, $4, {now}, {from}), ($1 + 1, $2, $5, $6, {now}, {to})",
        en, fmt::arg("now", now), fmt::arg("from", after("$3")), fmt::arg("to", after("$5")));
  }
  chain_savepoint = "SAVEPOINT rowguard_chain";
  chain_rollback = "ROLLBACK TO SAVEPOINT rowguard_chain";
  chain_release = "RELEASE SAVEPOINT rowguard_chain";
}

HoldStatements::HoldStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string acc = backend.table("accounts");
  const std::string tr = backend.table("transfers");
  const std::string holds = backend.table("holds");
  const std::string now = d.now_timestamp();
  expire = fmt::format(
      "UPDATE {} SET state = 'expired', closed_at = {now} WHERE from_account = $1 AND state = 'held' AND "
      "expires_at <= {now} RETURNING amount",
      holds, fmt::arg("now", now));
  unhold = fmt::format("UPDATE {} SET held = held - $2 WHERE id = $1", acc);
  add = fmt::format("UPDATE {} SET held = held + $2, version = version + 1, updated_at = {} WHERE id = $1", acc, now);
  read = fmt::format(
      "SELECT id, idempotency_key, from_account, to_account, amount, CAST(currency AS text), state, captured, "
      "transfer_id, {} - {}, {} FROM {} WHERE id = $1",
      d.timestamp_to_ms("expires_at"), d.now_ms(), details_columns(d, ""), holds);
  lock = read + d.for_update();
  insert = fmt::format(
      "INSERT INTO {} (id, idempotency_key, from_account, to_account, amount, currency, state, expires_at, "
      "created_at, timeout_ms, code, reference, metadata, event_at) VALUES ({}, $1, $2, $3, $4, $5, $6, {}, {}, $7, "
      "$8, $9, $10, {}) RETURNING id",
      holds, d.next_id(holds), d.timestamp_plus_ms(now, "$7"), now, d.ms_to_timestamp("$11"));
  close = fmt::format(
      "UPDATE {} SET state = $2, captured = $3, transfer_id = $4, closed_at = {} WHERE id = $1 AND state = 'held'",
      holds, now);
  capture_debit = fmt::format(
      "UPDATE {} SET balance = balance - $2, held = held - $3, version = version + 1, updated_at = {} "
      "WHERE id = $1 AND held >= $3",
      acc, now);
  // The capture's transfer carries the hold's details (a VALUES list: PostgreSQL's next id is DEFAULT).
  capture_record = fmt::format(
      "INSERT INTO {tr} (id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, hold_id, "
      "created_at, code, reference, metadata, event_at) VALUES ({id}, $1, 'transfer', $2, $3, $4, $5, 'ok', $6, "
      "{now}, (SELECT code FROM {h} WHERE id = $6), (SELECT reference FROM {h} WHERE id = $6), "
      "(SELECT metadata FROM {h} WHERE id = $6), (SELECT event_at FROM {h} WHERE id = $6)) RETURNING id",
      fmt::arg("tr", tr), fmt::arg("id", next_id_above_high_water(backend, "transfers")), fmt::arg("now", now),
      fmt::arg("h", holds));
  expired_accounts =
      fmt::format("SELECT DISTINCT from_account FROM {} WHERE state = 'held' AND expires_at <= {}", holds, now);
  // The functions of schema step 009 (schema/postgres/009_batches_and_holds.sql): the work of the
  // statements above, one call each, its inner statements planned once per server session.
  if (d.has_server_statements()) {
    apply_hold = backend.function_call("apply_hold", 10);
    apply_capture = backend.function_call("apply_capture", 4);
    apply_void = backend.function_call("apply_void", 2);
  }
}

HistoryStatements::HistoryStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string tr = backend.table("transfers");
  const std::string en = backend.table("entries");
  const std::string ob = backend.table("opening_balances");
  const std::string columns = fmt::format(
      "t.id, t.idempotency_key, t.kind, t.from_account, t.to_account, t.amount, CAST(t.currency AS text), "
      "t.outcome, t.reverses, t.hold_id, t.global_txid, {}, {}",
      d.timestamp_to_ms("t.created_at"), details_columns(d, "t."));
  for (const bool newest_first : {false, true})
    for (const bool window : {false, true})
      history_[at(newest_first, window)] = history_page_sql(d, tr, en, columns, newest_first, window);
  const auto find = [&](std::string_view by) {
    return fmt::format(
        "SELECT {}, {} FROM {} t LEFT JOIN {} x ON x.transfer_id = t.id WHERE {} = $1 "
        "ORDER BY x.id",
        columns, entry_columns, tr, en, by);
  };
  find_by_id = find("t.id");
  find_by_key = find("t.idempotency_key");
  dialect_ = &d;
  transfers_table_ = tr;
  entries_table_ = en;
  columns_ = columns;
  const std::string acc = backend.table("accounts");
  account_exists = fmt::format("SELECT count(*) FROM {} WHERE id = $1", acc);
  balance_at = fmt::format(
      "SELECT (SELECT count(*) FROM {acc} WHERE id = $1), (SELECT balance FROM {ob} WHERE account_id = $1), "
      "(SELECT {as_of} FROM {ob} WHERE account_id = $1), "
      "(SELECT CAST(COALESCE(SUM(amount), 0) AS bigint) FROM {en} WHERE account_id = $1 AND created_at < {at})",
      fmt::arg("acc", acc), fmt::arg("ob", ob), fmt::arg("as_of", d.timestamp_to_ms("as_of")), fmt::arg("en", en),
      fmt::arg("at", d.ms_to_timestamp("$2")));
}

std::string HistoryStatements::transfers(const TransferFilter& filter) const {
  return transfer_page_sql(*dialect_, transfers_table_, entries_table_, columns_, filter);
}

ArchiveStatements::ArchiveStatements(const Backend& backend) {
  const auto& d = backend.dialect();
  const std::string tr = backend.table("transfers");
  const std::string cut = d.ms_to_timestamp("$1");
  clock = fmt::format("SELECT {}", d.now_ms());
  // A transfer that must stay live: created at or after the cutoff, the capture of a hold (holds
  // are never archived and point at it), or a leg of a two-phase transaction not yet finished.
  // (The decision log exists only where two-phase commit does: PostgreSQL.)
  const std::string unfinished_leg =
      d.has_prepared_transactions()
          ? fmt::format(
                " OR (m.global_txid IS NOT NULL AND EXISTS (SELECT 1 FROM {} g WHERE g.gid = m.global_txid "
                "AND g.finished_at IS NULL))",
                backend.table("global_transactions"))
          : std::string();
  const std::string stays =
      fmt::format("(m.created_at >= {} OR EXISTS (SELECT 1 FROM {} h WHERE h.transfer_id = m.id){})", cut,
                  backend.table("holds"), unfinished_leg);
  // A transfer and its reversals move together or not at all: a reversal points at its original
  // (a foreign key), and reverse() sums the live refunds of an original, which must all be there.
  const std::string movable = fmt::format(
      "t.created_at < {cut} "
      "AND NOT EXISTS (SELECT 1 FROM {tr} m WHERE m.id = COALESCE(t.reverses, t.id) AND {stays}) "
      "AND NOT EXISTS (SELECT 1 FROM {tr} m WHERE m.reverses = COALESCE(t.reverses, t.id) AND {stays})",
      fmt::arg("cut", cut), fmt::arg("tr", tr), fmt::arg("stays", stays));
  const std::string ta = backend.table("transfers_archive");
  const std::string columns =
      "id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, reverses, created_at, "
      "hold_id, global_txid, code, reference, metadata, event_at";
  copy_transfers = fmt::format("INSERT INTO {ta} ({c}) SELECT {c} FROM {tr} t WHERE {movable}", fmt::arg("ta", ta),
                               fmt::arg("c", columns), fmt::arg("tr", tr), fmt::arg("movable", movable));
  // From here on the run's transfers are the live ones already copied: the archive table is the
  // set, so every later statement sees exactly the rows the copy chose.
  const std::string moved = fmt::format("t.created_at < {} AND EXISTS (SELECT 1 FROM {} a WHERE a.id = t.id)", cut, ta);
  const std::string en = backend.table("entries");
  copy_entries = fmt::format(
      "INSERT INTO {} (id, transfer_id, account_id, amount, created_at, balance_after, account_version) "
      "SELECT e.id, e.transfer_id, e.account_id, e.amount, e.created_at, e.balance_after, e.account_version "
      "FROM {} e JOIN {} t ON t.id = e.transfer_id WHERE {}",
      backend.table("entries_archive"), en, tr, moved);
  const std::string ob = backend.table("opening_balances");
  add_openings = fmt::format(
      "INSERT INTO {ob} (account_id, balance, entries, as_of) "
      "SELECT e.account_id, CAST(SUM(e.amount) AS bigint), count(*), {cut} FROM {en} e JOIN {tr} t "
      "ON t.id = e.transfer_id WHERE {moved} GROUP BY e.account_id "
      "ON CONFLICT (account_id) DO UPDATE SET balance = {ob}.balance + excluded.balance, "
      "entries = {ob}.entries + excluded.entries, "
      "as_of = CASE WHEN excluded.as_of > {ob}.as_of THEN excluded.as_of ELSE {ob}.as_of END",
      fmt::arg("ob", ob), fmt::arg("cut", cut), fmt::arg("en", en), fmt::arg("tr", tr), fmt::arg("moved", moved));
  const std::string at = backend.table("archived_totals");
  add_totals = fmt::format(
      "INSERT INTO {at} (currency, deposits, withdrawals) "
      "SELECT t.currency, CAST(COALESCE(SUM(CASE WHEN t.kind = 'deposit' THEN t.amount END), 0) AS bigint), "
      "CAST(COALESCE(SUM(CASE WHEN t.kind = 'withdrawal' THEN t.amount END), 0) AS bigint) FROM {tr} t "
      "WHERE {moved} AND t.outcome = 'ok' AND t.kind IN ('deposit', 'withdrawal') GROUP BY t.currency "
      "ON CONFLICT (currency) DO UPDATE SET deposits = {at}.deposits + excluded.deposits, "
      "withdrawals = {at}.withdrawals + excluded.withdrawals",
      fmt::arg("at", at), fmt::arg("tr", tr), fmt::arg("moved", moved));
  delete_entries = fmt::format("DELETE FROM {} WHERE transfer_id IN (SELECT t.id FROM {} t WHERE {})", en, tr, moved);
  // Reversals and their originals go in one statement: the foreign key is checked at its end.
  delete_transfers = fmt::format("DELETE FROM {tr} WHERE id IN (SELECT t.id FROM {tr} t WHERE {moved})",
                                 fmt::arg("tr", tr), fmt::arg("moved", moved));
  const std::string ar = backend.table("archives");
  record_run = fmt::format(
      "INSERT INTO {ar} (cutoff, transfers, entries, archived_at) VALUES ({cut}, $2, $3, {now}) "
      "ON CONFLICT (cutoff) DO UPDATE SET transfers = {ar}.transfers + excluded.transfers, "
      "entries = {ar}.entries + excluded.entries, archived_at = excluded.archived_at",
      fmt::arg("ar", ar), fmt::arg("cut", cut), fmt::arg("now", d.now_timestamp()));
  // The largest ids ever archived, kept apart from the archive tables (which a DBA may empty): new
  // ids stay above them (next_id_above_high_water).
  const std::string hw = backend.table("id_high_water");
  high_water = fmt::format(
      "INSERT INTO {hw} (name, last_id) SELECT n, m FROM (SELECT 'transfers' AS n, (SELECT MAX(id) FROM {ta}) AS m "
      "UNION ALL SELECT 'entries', (SELECT MAX(id) FROM {ea})) x WHERE m IS NOT NULL "
      "ON CONFLICT (name) DO UPDATE SET last_id = CASE WHEN excluded.last_id > {hw}.last_id THEN excluded.last_id "
      "ELSE {hw}.last_id END",
      fmt::arg("hw", hw), fmt::arg("ta", ta), fmt::arg("ea", backend.table("entries_archive")));
  kept = fmt::format("SELECT count(*) FROM {} WHERE created_at < {}", tr, cut);
}

CheckStatements::CheckStatements(const Backend& backend) {
  const std::string acc = backend.table("accounts");
  const std::string tr = backend.table("transfers");
  const std::string en = backend.table("entries");
  const std::string holds = backend.table("holds");
  const std::string ob = backend.table("opening_balances");
  const std::string ea = backend.table("entries_archive");
  const std::string at = backend.table("archived_totals");
  balance_mismatch = fmt::format(
      "SELECT a.id, a.balance, COALESCE(o.balance, 0), COALESCE(e.total, 0) FROM {} a "
      "LEFT JOIN {} o ON o.account_id = a.id LEFT JOIN "
      "(SELECT account_id, CAST(SUM(amount) AS bigint) AS total FROM {} GROUP BY account_id) e "
      "ON e.account_id = a.id "
      "WHERE a.balance <> COALESCE(o.balance, 0) + COALESCE(e.total, 0) ORDER BY a.id",
      acc, ob, en);
  // An opening balance is what the account's archived entries add up to. A DBA may export and
  // empty the archive tables (docs/operations.md), and archive() goes on adding to the opening
  // balances afterwards: an account whose archive holds fewer entries than its opening balance
  // counts was exported, and its sum cannot be checked. More entries than counted, or as many
  // with another sum, is a violation.
  opening_mismatch = fmt::format(
      "SELECT x.account_id, x.total, x.n, COALESCE(o.balance, 0), "
      "COALESCE(o.entries, 0) FROM (SELECT account_id, CAST(SUM(amount) AS bigint) "
      "AS total, count(*) AS n FROM {} GROUP BY account_id) x LEFT JOIN {} o ON "
      "o.account_id = x.account_id WHERE o.account_id IS NULL OR x.n > o.entries OR "
      "(x.n = o.entries AND x.total <> o.balance) ORDER BY x.account_id",
      ea, ob);
  // What holds reserve can never be paid twice: balance - held stays at or above the minimum.
  below_minimum = fmt::format(
      "SELECT id, balance, held, min_balance FROM {} WHERE balance < "
      "min_balance OR balance - held < min_balance ORDER BY id",
      acc);
  // accounts.held is the sum of the account's open holds (expired ones included until closed).
  held_mismatch = fmt::format(
      "SELECT a.id, a.held, COALESCE(h.total, 0) FROM {} a LEFT JOIN "
      "(SELECT from_account, CAST(SUM(amount) AS bigint) AS total FROM {} WHERE state = "
      "'held' GROUP BY from_account) h ON h.from_account = a.id "
      "WHERE a.held <> COALESCE(h.total, 0) ORDER BY a.id",
      acc, holds);
  // A captured hold has exactly its capture: an applied transfer of the captured amount.
  capture_mismatch = fmt::format(
      "SELECT h.id FROM {} h LEFT JOIN {} t ON t.id = h.transfer_id WHERE "
      "h.state = 'captured' AND (t.id IS NULL OR t.amount <> h.captured OR t.outcome <> "
      "'ok' OR t.hold_id IS NULL OR t.hold_id <> h.id) ORDER BY h.id",
      holds, tr);
  unbalanced_transfer = fmt::format(
      "SELECT t.id FROM {} t JOIN {} e ON e.transfer_id = t.id WHERE t.kind = 'transfer' "
      "GROUP BY t.id HAVING SUM(e.amount) <> 0",
      tr, en);
  rejected_with_entries = fmt::format(
      "SELECT t.id FROM {} t WHERE t.outcome <> 'ok' AND EXISTS "
      "(SELECT 1 FROM {} e WHERE e.transfer_id = t.id)",
      tr, en);
  // Per currency: the balances add up to deposits minus withdrawals.
  totals = fmt::format(
      "SELECT c.currency, COALESCE(b.total, 0), COALESCE(d.total, 0), COALESCE(w.total, 0) FROM "
      "(SELECT currency FROM {acc} UNION SELECT currency FROM {tr} UNION SELECT currency FROM {at}) c "
      "LEFT JOIN (SELECT currency, CAST(SUM(balance) AS bigint) AS total FROM {acc} GROUP BY currency) b "
      "ON b.currency = c.currency "
      // Archived transfers count through their carried-forward totals.
      "LEFT JOIN (SELECT currency, CAST(SUM(amount) AS bigint) AS total FROM (SELECT currency, amount FROM {tr} "
      "WHERE kind = 'deposit' AND outcome = 'ok' UNION ALL SELECT currency, deposits FROM {at}) dd "
      "GROUP BY currency) d ON d.currency = c.currency "
      "LEFT JOIN (SELECT currency, CAST(SUM(amount) AS bigint) AS total FROM (SELECT currency, amount FROM {tr} "
      "WHERE kind = 'withdrawal' AND outcome = 'ok' UNION ALL SELECT currency, withdrawals FROM {at}) ww "
      "GROUP BY currency) w ON w.currency = c.currency ORDER BY c.currency",
      fmt::arg("acc", acc), fmt::arg("tr", tr), fmt::arg("at", at));
  // The running balances, over the live and the archived entries of each account in id order
  // (archiving may keep an older entry live, a hold's capture, while it moves a newer one): each
  // live entry's balance_after is the sum of the amounts up to and including it, that is the
  // previous entry's balance_after plus its amount. Archived entries were checked while live
  // (opening_mismatch checks what they add up to). An account whose archived entries were exported
  // (fewer in the archive than its opening balance counts, which opening_mismatch cannot check
  // either) has lost entries at places no table records: its chain is not checked (only that
  // every live entry has a balance_after).
  const std::string stored = fmt::format(
      "SELECT id, account_id, amount, balance_after, 1 AS live FROM {} UNION ALL "
      "SELECT id, account_id, amount, balance_after, 0 FROM {}",
      en, ea);
  chain_mismatch = fmt::format(
      "SELECT c.id, c.account_id, c.balance_after, c.expected FROM (SELECT u.id, u.account_id, u.balance_after, "
      "u.live, CAST(SUM(u.amount) OVER (PARTITION BY u.account_id ORDER BY u.id) AS bigint) AS expected "
      "FROM ({stored}) u) c LEFT JOIN {ob} o ON o.account_id = c.account_id "
      "LEFT JOIN (SELECT account_id, count(*) AS n FROM {ea} GROUP BY account_id) s ON s.account_id = c.account_id "
      "WHERE c.live = 1 AND (c.balance_after IS NULL OR (COALESCE(o.entries, 0) <= COALESCE(s.n, 0) "
      "AND c.balance_after <> c.expected)) ORDER BY c.id",
      fmt::arg("stored", stored), fmt::arg("ob", ob), fmt::arg("ea", ea));
  // The newest entry's balance_after is the account's balance (when it is live; not for an
  // account with exported archived entries, whose newest entry may be among them).
  last_mismatch = fmt::format(
      "SELECT a.id, a.balance, l.id, l.balance_after FROM {acc} a JOIN (SELECT u.id, u.account_id, "
      "u.balance_after, u.live, ROW_NUMBER() OVER (PARTITION BY u.account_id ORDER BY u.id DESC) AS n FROM ({stored}) "
      "u) l ON l.account_id = a.id AND l.n = 1 AND l.live = 1 LEFT JOIN {ob} o ON o.account_id = a.id "
      "LEFT JOIN (SELECT account_id, count(*) AS n FROM {ea} GROUP BY account_id) s ON s.account_id = a.id "
      "WHERE COALESCE(o.entries, 0) <= COALESCE(s.n, 0) AND (l.balance_after IS NULL OR l.balance_after <> a.balance) "
      "ORDER BY a.id",
      fmt::arg("acc", acc), fmt::arg("stored", stored), fmt::arg("ob", ob), fmt::arg("ea", ea));
  accounts = fmt::format("SELECT count(*) FROM {}", acc);
  entries = fmt::format("SELECT count(*) FROM {}", en);
}

std::string array_param(const std::vector<std::optional<std::string>>& elements) {
  std::string out = "{";
  for (const auto& element : elements) {
    if (out.size() > 1) out += ',';
    if (!element) {
      out += "NULL";
      continue;
    }
    out += '"';
    for (const char c : *element) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

}  // namespace rowguard::detail
