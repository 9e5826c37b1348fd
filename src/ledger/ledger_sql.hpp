#pragma once
// The SQL of the ledger, built once per Ledger from the dialect and the table prefix: one place for
// a DBA to read what the ledger asks of its tables (accounts, transfers, entries, holds, the archive
// tables) and which invariants check() verifies. Values are always bound parameters.

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.hpp"

namespace rowguard::detail {

// The record of an idempotency key, wherever it is: one row of the columns
//   id, kind, from_account, to_account, amount, outcome, global_txid, reverses, hold_id, timeout_ms,
//   code, reference, metadata (as text), event_at (epoch ms)
// from <prefix>transfers, or from <prefix>holds with kind 'hold' and the hold's state as outcome.
// Transfers and holds share one namespace of keys (TransferStatements::find_key).
inline constexpr std::size_t key_record_columns = 14;

struct AccountStatements {
  // $1 id, $2 currency, $3 min_balance -> an account at balance 0, and its id; no row when the id
  // is taken (already open, or opened concurrently: no unique violation).
  std::string open;
  // $1 id -> (id, currency, balance, min_balance, version, held): held counts only the open holds
  // not yet past their timeout, as a reader sees it (accounts.held also counts expired holds no
  // one has closed yet).
  std::string get;
  // -> every account, the columns of get, by id.
  std::string list;
  // -> (currency, accounts, sum of balances, sum of accounts.held) per currency, by code: one aggregate.
  std::string currencies;
  // $1 limit -> (id, currency, balance, min_balance, version, held), the largest balances first.
  std::string largest;

  explicit AccountStatements(const Backend& backend);
};

// Transfers, deposits, withdrawals and reversals, one statement per step (ledger.cpp), and the
// steps a capture shares with them (holds.cpp).
struct TransferStatements {
  // $1 key -> the key's record (key_record_columns), in either table; at most one row.
  std::string find_key;
  // $1 id / $1, $2 ids -> (id, currency, balance, min_balance, held), the rows locked. Both rows
  // are locked in key order, so two transfers in opposite directions never deadlock.
  std::string lock_one;
  std::string lock_two;
  // $1 id, $2 amount: relative, conditional updates, never a value read earlier. debit changes no
  // row when balance - amount - held would fall below min_balance.
  std::string debit;
  std::string credit;
  // $1 key, $2 kind, $3 from, $4 to, $5 amount, $6 currency, $7 outcome, $8 reverses, $9 global_txid
  // -> (id), a new id above every id the table ever had.
  std::string record;
  // $1 transfer id, $2 account, $3 amount (negative for the debited account). The entry records
  // the account's balance and version as the transaction's update left them (balance_after,
  // account_version): run it after the account's debit or credit.
  std::string entry;
  // $1 transfer id -> one row: the balance_after of its debit entry and of its credit entry (NULL
  // where it has none: a deposit's source, a withdrawal's destination, a rejected transfer). A
  // replay's balances are the original's.
  std::string entry_balances;
  // $1 original key -> (id, from_account, to_account, amount) of the applied transfer with that key,
  // locked: a reversal locks the original transfer row, so two concurrent refunds cannot both pass
  // the sum.
  std::string lock_original;
  // $1 transfer id -> (the sum of its applied refunds).
  std::string refunded;
  // $1 id, $2 version read, $3 min_balance: no row changed when the version moved on.
  std::string update;
  // $1 -(age ms): forgets the keys of the transfers older than the age.
  std::string prune;
  // PostgreSQL: a whole transfer as one call of the server-side function <prefix>apply_transfer
  // (schema step 008), one round trip (empty elsewhere). $1 from, $2 to, $3 amount, $4 key, $5 and
  // $6 the cache keys of both accounts in key order, dropped only if money moved (NULL without a
  // cache) -> one row: the key's record (key_record_columns, NULL for a new key), then the
  // currencies of from and to (NULL when absent), the overflow flag (1: to's balance would leave
  // int64), the new record's id and outcome (NULL when nothing was recorded: a replay, a refusal,
  // or a source short only while it has holds, which the statement does not look at) and how many
  // account and entry rows it changed (4 for an applied transfer).
  std::string one_statement_transfer;
  // PostgreSQL: a batch as one call of <prefix>apply_batch (schema step 009), empty elsewhere. $1
  // from, $2 to, $3 amount, $4 key, $5 linked, $6 and $7 the cache keys: arrays, one element per
  // item (array_param), a NULL key for an item refused before sending -> per item looked at, the
  // columns of one_statement_transfer, then (item index, failed 0/1, stopped 0/1, sqlstate,
  // message) as the function's comment says.
  std::string batch;
  // Where the dialect has a single writer (SQLite): the lean path of Ledger::Impl::apply_in, empty
  // elsewhere. lookup: $1 key, $2 from, $3 to (NULL when the request has none) -> one row: the
  // key's record (key_record_columns, all NULL for a new key), then from's and to's (currency,
  // balance, min_balance, held), NULL for an account that does not exist, then the next transfer
  // id and the next entry id (next_id above the high-water mark). Replaces find_key, lock_one or
  // lock_two, and the id lookups of record and entry: the write lock is held from BEGIN IMMEDIATE,
  // so the rows and the ids stay as read.
  std::string lookup;
  // record with the id read by lookup as $10 and no RETURNING (SQLite writes a RETURNING row to a
  // temporary table and a statement journal that then spills to a file: 5x the insert itself).
  std::string record_as;
  // $1 id, $2 transfer id, $3 account, $4 amount: one entry at the id read by lookup.
  std::string entry_as;
  // $1 id, $2 transfer id, $3 from, $4 -amount, $5 to, $6 amount: both entries of a transfer in one
  // statement, at ids $1 and $1 + 1.
  std::string entry_pair;
  // Every backend: $1, $2 the cache keys of the accounts changed, in key order (NULL for none):
  // their cached copies' tombstones in one statement (cache_invalidate_two_sql).
  std::string invalidate_two;
  // transfer_batch: a savepoint around each linked chain, rolled back when an item of it fails.
  std::string chain_savepoint;
  std::string chain_rollback;
  std::string chain_release;

  explicit TransferStatements(const Backend& backend);
};

// A PostgreSQL array literal of text elements, bound as one parameter ({"a","b\"c",NULL}): every
// element quoted, backslash and double quote escaped, nullopt as NULL.
std::string array_param(const std::vector<std::optional<std::string>>& elements);

// Holds (holds.cpp): a hold reserves part of an account's available amount in accounts.held until
// a capture, a void or its timeout on the database clock closes it.
struct HoldStatements {
  // $1 hold id -> (id, idempotency_key, from_account, to_account, amount, currency, state, captured,
  // transfer_id, ms until it expires on the database clock); no row when absent.
  std::string read;
  // read, the hold row locked.
  std::string lock;
  // $1 key, $2 from, $3 to, $4 amount, $5 currency, $6 state (held or rejected), $7 timeout ms
  // -> (id). timeout_ms keeps the request's timeout, which a replay compares ($7 also sets expires_at).
  std::string insert;
  // $1 account, $2 amount (negative to release it): added to accounts.held, a new version.
  std::string add;
  // $1 hold id, $2 state, $3 captured, $4 transfer id or NULL: closes the hold, only while held.
  std::string close;
  // $1 account -> (amount) of each of its holds past their timeout, now closed (state expired).
  std::string expire;
  // $1 account, $2 amount the expired holds counted: taken out of accounts.held. Closing an expired
  // hold changes no amount a reader sees (reads leave expired holds out): no version bump, so it
  // never fails a concurrent update()'s version check.
  std::string unhold;
  // $1 account, $2 amount captured, $3 the hold's amount: the capture pays from what the hold
  // reserved; no row changed when the account holds less than the hold.
  std::string capture_debit;
  // $1 key, $2 from, $3 to, $4 amount, $5 currency, $6 hold id -> (id) of the capture's transfer.
  std::string capture_record;
  // -> (from_account) of each account with an open hold past its timeout.
  std::string expired_accounts;
  // PostgreSQL: a hold, a capture and a void each as one call of a server-side function of schema
  // step 009 (<prefix>apply_hold, apply_capture, apply_void), one round trip (empty elsewhere). The
  // last parameter of each is the key prefix of the accounts' cached copies (NULL without a cache).
  // apply_hold: $1 from, $2 to, $3 amount, $4 key, $5 timeout ms -> one row: the key's record
  // (key_record_columns, NULL for a new key), the currencies of from and to (NULL when absent), the
  // overflow flag (1: held would leave int64), the new hold's id and state (NULL when nothing was
  // recorded).
  std::string apply_hold;
  // apply_capture: $1 hold id, $2 amount (NULL: the whole hold), $3 key -> one row: the hold (the
  // columns of read, NULL when absent), the key's record (key_record_columns), then 1/0 flags: the
  // destination exists, its balance would leave int64, the source holds less than the hold; and
  // the capture's transfer id (NULL when nothing was written).
  std::string apply_capture;
  // apply_void: $1 hold id -> one row: the hold as read under its source's lock, before the call
  // changed it (the columns of read, NULL when absent).
  std::string apply_void;

  explicit HoldStatements(const Backend& backend);
};

// What a page of HistoryStatements::transfers filters on, in the order of its parameters after $1
// cursor and $2 limit: the account; since and until (epoch ms); the code; the reference; the
// metadata (PostgreSQL: one parameter, the object, as jsonb @>; elsewhere two per key: the JSON path
// '$."key"' and the value's JSON text, compared with json_extract).
struct TransferFilter {
  bool by_account = false;
  bool with_entries = false;
  bool window = false;
  bool code = false;
  bool reference = false;
  std::size_t metadata_keys = 0;  // 0: no metadata filter
};

// The journal's read-only queries (history.cpp), one statement per call, keyset-paginated where
// they page. A transfer row starts with its 16 columns (id, idempotency_key, kind, from_account,
// to_account, amount, currency, outcome, reverses, hold_id, global_txid, created ms, code,
// reference, metadata, event ms); "with its entries" adds (entry id, account, amount,
// balance_after, account_version): one row per entry, NULLs for a transfer without any.
struct HistoryStatements {
  // One page of an account's journal (by entry id: one entry per account per transfer), each with
  // its transfer and all its entries. $1 account, $2 cursor (exclusive), $3 limit; with a time
  // window $3 since, $4 until, $5 limit. Without one the page is a plain walk of the entries index
  // (no join, which makes PostgreSQL's generic plan for a prepared statement sort all of the
  // account's entries: measured 118 ms against 0.1 ms for a hot account).
  // -> a row per entry of each transfer on the page: the transfer's 16 columns, the account's entry
  // id, amount and balance_after, then the entry's columns; by the account's entry id, then by entry.
  const std::string& history(bool newest_first, bool window) const { return history_[at(newest_first, window)]; }
  // One transfer with its entries (none for a rejected one). $1 id or key.
  std::string find_by_id;
  std::string find_by_key;
  // One page of transfers, newest first: $1 cursor (exclusive), $2 limit, then one parameter per
  // filter asked for, in TransferFilter's order (metadata: see TransferFilter). With an account, the
  // two indexed arms (from, to) each stop at limit rows before they are merged. Built per call
  // (the filters make 2^6 forms); values are always bound.
  std::string transfers(const TransferFilter& filter) const;
  // $1 account -> (1 when it exists, else 0).
  std::string account_exists;
  // The account's existence, its opening balance and as_of (NULL without one), and the sum of its
  // live entries created before $2. $1 account. The entries' own time, not a join with their
  // transfers: PostgreSQL hashes a join over the whole transfers table (measured 117 ms against
  // 12 ms on 200k transfers), and opening_balances.as_of is an entry time too.
  std::string balance_at;

  explicit HistoryStatements(const Backend& backend);

 private:
  static std::size_t at(bool first, bool second) { return (first ? 2 : 0) + (second ? 1 : 0); }
  std::array<std::string, 4> history_;  // at(newest_first, window)
  const Dialect* dialect_ = nullptr;    // the backend's, which outlives the ledger's statements
  std::string transfers_table_, entries_table_, columns_;
};

// One run of Ledger::archive (archive.cpp), in one transaction: old transfers and their entries
// move to the archive tables, what they add up to carried forward into the opening balances and
// the archived totals. $1 is the cutoff in epoch milliseconds throughout.
struct ArchiveStatements {
  // -> (the database clock, epoch ms).
  std::string clock;
  // $1 -> rows copied: the transfers before the cutoff that may leave the live table, with their
  // reversals or originals, into transfers_archive.
  std::string copy_transfers;
  // $1 -> rows copied: the entries of the transfers copied, into entries_archive.
  std::string copy_entries;
  // $1 -> rows written: what the copied entries add up to (and how many they are) added to each
  // account's opening balance.
  std::string add_openings;
  // $1: the copied applied deposits and withdrawals added to the archived totals, per currency.
  std::string add_totals;
  // $1 -> rows deleted: the copied entries, then the copied transfers, from the live tables.
  std::string delete_entries;
  std::string delete_transfers;
  // $1, $2 transfers, $3 entries: the run, added to any earlier run with the same cutoff.
  std::string record_run;
  // The largest transfer and entry ids in the archive tables, recorded in id_high_water (never
  // lowered): TransferStatements::record and entry keep new ids above them.
  std::string high_water;
  // $1 -> (the transfers before the cutoff still live).
  std::string kept;

  explicit ArchiveStatements(const Backend& backend);
};

// The invariants Ledger::check verifies (ledger.cpp), all read in one snapshot. The queries up to
// rejected_with_entries return the rows that break their invariant (none in a sound ledger); check()
// compares the totals itself.
struct CheckStatements {
  // -> (id, balance, opening balance, sum of its live entries) of each account whose balance is not
  // its opening balance plus its entries.
  std::string balance_mismatch;
  // -> (account, sum of its archived entries, their count, opening balance, entries it counts) of
  // each account whose archived entries do not add up to its opening balance.
  std::string opening_mismatch;
  // -> (id, balance, held, min_balance) of each account below its minimum, held money counted out.
  std::string below_minimum;
  // -> (id, held, sum of its open holds) of each account whose held amount is not that sum.
  std::string held_mismatch;
  // -> (hold id) of each captured hold without its applied capture of the captured amount.
  std::string capture_mismatch;
  // -> (transfer id) of each transfer between accounts whose entries do not add up to 0.
  std::string unbalanced_transfer;
  // -> (transfer id) of each rejected transfer with entries.
  std::string rejected_with_entries;
  // -> (currency, sum of balances, deposits, withdrawals) of every currency, by code, the archived
  // transfers included.
  std::string totals;
  // -> (entry id, account, balance_after, the balance its chain gives) of each live entry whose
  // balance_after is not the previous one's (live or archived) plus its amount (see the query).
  std::string chain_mismatch;
  // -> (account, balance, entry id, balance_after) of each account whose newest entry's
  // balance_after is not its balance.
  std::string last_mismatch;
  // -> (count) of the accounts, of the live entries.
  std::string accounts;
  std::string entries;

  explicit CheckStatements(const Backend& backend);
};

}  // namespace rowguard::detail
