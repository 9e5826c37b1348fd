#pragma once
// The SQL of the saga coordinator, built once per Sagas from the dialect and the table prefix: one
// place for a DBA to read what sagas ask of their two tables.

#include <string>

#include "backend/backend.hpp"

namespace rowguard::detail {

struct SagaStatements {
  // $1 id -> (id, type, payload, state, step, error, owner, created ms, updated ms); no row when absent.
  std::string read;
  // $1 id -> (step, name, state, result, error, attempts), by step.
  std::string steps;
  // $1 id, $2 type, $3 payload, $4 owner: a saga running at step 0, unless the row exists (a
  // retry whose first commit went through unseen: only the lease's holder writes the row).
  std::string insert;
  // $1 id, $2 state, $3 step, $4 error, $5 owner.
  std::string set;
  // $1 id, $2 step, $3 name: a step begun for the first time or again (after a crash, or a retry
  // whose first commit went through unseen): one upsert, so the write is safe to repeat.
  std::string step_start;
  // $1 id, $2 step, $3 name, $4 result / error, $5 runs to add to its attempts: the step's row
  // ends done or failed, written as a new row when it has none (a step run inside the
  // transaction that records it never writes 'started').
  std::string step_done;
  std::string step_failed;
  // $1 id, $2 step, $3 state.
  std::string step_state;
  // -> (id, type) of every saga running or compensating, the least recently updated first.
  std::string unresolved;

  explicit SagaStatements(const Backend& backend);

  // The columns of read, filtered by state ($1) when by_state, by type (the next parameter) when
  // by_type, oldest first, with the LIMIT as the last parameter.
  std::string list(bool by_state, bool by_type) const;

 private:
  std::string select_;  // read's SELECT ... FROM, without its WHERE
};

}  // namespace rowguard::detail
