#pragma once
// The replicated servers of scripts/pg-replicated.sh (or scripts/pg-auto-failover.sh), as the
// failover and standby-read tests see them. Those tests run only under their harness (ctest -L
// failover); without it they fail, never skip.

#include <string>

namespace rowguard::test {

// One of the variables the harness exports (ROWGUARD_TEST_PG_MULTI, ROWGUARD_TEST_PG_STANDBY, ...);
// fails the test when it is unset.
std::string replicated_env(const char* name);

// The test's URL turned into the harness's multi-host URL (read-write sessions only), so that a
// new session after a failover finds whichever server is the primary now. For TestDb's route.
std::string multi_host(const std::string& url);
// The standby's URL, for the backend under test (soci+ when the test's URL has it).
std::string standby_url(const std::string& url);

// Runs one action of the harness's failover helper (failover, kill-primary, promote,
// detach-standby, caught-up, ...) and returns its output; fails the test when the action fails.
std::string failover(const std::string& action);

}  // namespace rowguard::test
