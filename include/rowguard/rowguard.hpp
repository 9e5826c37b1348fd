#pragma once
// Umbrella header: everything a service needs from rowguard.
#include "rowguard/cache.hpp"
#include "rowguard/database.hpp"
#include "rowguard/error.hpp"
#include "rowguard/fence.hpp"
#include "rowguard/ledger.hpp"
#include "rowguard/locks.hpp"
#include "rowguard/money.hpp"
#include "rowguard/retry.hpp"
#include "rowguard/saga.hpp"
#include "rowguard/transaction.hpp"
#include "rowguard/value.hpp"
#include "rowguard/version.hpp"
