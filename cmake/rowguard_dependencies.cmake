# Finds every external package and says clearly which Debian package provides what is missing.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)

function(rowguard_missing what debian_package)
  message(FATAL_ERROR "rowguard: ${what} not found. Install it with: apt-get install ${debian_package} "
                      "(or run scripts/install-deps.sh as root).")
endfunction()

find_package(fmt CONFIG QUIET)
if(NOT fmt_FOUND)
  rowguard_missing("fmt" "libfmt-dev")
endif()

pkg_check_modules(SQLITE3 QUIET IMPORTED_TARGET sqlite3)
if(NOT SQLITE3_FOUND)
  rowguard_missing("SQLite 3" "libsqlite3-dev")
endif()

# libpq: the PostgreSQL engine's own part (LISTEN, connection-string checks), whichever driver.
if(ROWGUARD_WITH_POSTGRES OR ROWGUARD_WITH_SOCI)
  find_package(PostgreSQL QUIET)
  if(NOT PostgreSQL_FOUND)
    rowguard_missing("libpq (the PostgreSQL client library)" "libpq-dev")
  endif()
endif()

if(ROWGUARD_WITH_POSTGRES)
  pkg_check_modules(PQXX QUIET IMPORTED_TARGET libpqxx)
  if(NOT PQXX_FOUND)
    rowguard_missing("libpqxx (ROWGUARD_WITH_POSTGRES=ON; turn it OFF to build without PostgreSQL)" "libpqxx-dev")
  endif()
  if(NOT PQXX_VERSION VERSION_LESS 7.0)
    message(FATAL_ERROR "rowguard: libpqxx ${PQXX_VERSION} found, but rowguard is written against the 6.x API")
  endif()
endif()

if(ROWGUARD_WITH_SOCI)
  find_package(SOCI MODULE)
  if(NOT SOCI_FOUND)
    rowguard_missing("SOCI 4.0 (${SOCI_MISSING}; ROWGUARD_WITH_SOCI=ON, turn it OFF to build without SOCI)"
                     "libsoci-dev libboost-dev libpq-dev")
  endif()
endif()

if(ROWGUARD_BUILD_TOOLS)
  find_package(CLI11 CONFIG QUIET)
  if(NOT CLI11_FOUND)
    rowguard_missing("CLI11" "libcli11-dev")
  endif()
  find_package(nlohmann_json CONFIG QUIET)
  if(NOT nlohmann_json_FOUND)
    rowguard_missing("nlohmann-json" "nlohmann-json3-dev")
  endif()
  # rowguard serve. Debian's httplib.h declares only; the code is in libcpp-httplib, built with
  # TLS and compression, and its pkg-config file carries the macros the header must see to match it.
  pkg_check_modules(HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
  if(NOT HTTPLIB_FOUND)
    rowguard_missing("cpp-httplib (for rowguard serve)" "libcpp-httplib-dev")
  endif()
endif()

if(ROWGUARD_BUILD_TESTS)
  find_package(Catch2 CONFIG QUIET)
  if(NOT Catch2_FOUND)
    rowguard_missing("Catch2" "catch2")
  endif()
endif()
