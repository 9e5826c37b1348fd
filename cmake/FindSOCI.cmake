# FindSOCI: Debian's libsoci-dev 4.0.3 ships neither a CMake config nor a pkg-config file.
# Defines SOCI::core, SOCI::sqlite3 and SOCI::postgresql and sets SOCI_FOUND.
# SOCI's headers need Boost (soci-config.h defines SOCI_HAVE_BOOST) and, for the PostgreSQL
# backend, libpq's headers in /usr/include/postgresql.
set(SOCI_MISSING "")
find_path(SOCI_INCLUDE_DIR soci/soci.h)
find_library(SOCI_CORE_LIBRARY soci_core)
find_library(SOCI_SQLITE3_LIBRARY soci_sqlite3)
find_library(SOCI_POSTGRESQL_LIBRARY soci_postgresql)
find_path(SOCI_BOOST_INCLUDE_DIR boost/optional.hpp)
find_package(PostgreSQL QUIET)

foreach(part SOCI_INCLUDE_DIR SOCI_CORE_LIBRARY SOCI_SQLITE3_LIBRARY SOCI_POSTGRESQL_LIBRARY SOCI_BOOST_INCLUDE_DIR)
  if(NOT ${part})
    list(APPEND SOCI_MISSING ${part})
  endif()
endforeach()
if(NOT PostgreSQL_FOUND)
  list(APPEND SOCI_MISSING "libpq headers")
endif()

if(SOCI_MISSING)
  set(SOCI_FOUND FALSE)
  if(SOCI_FIND_REQUIRED)
    message(FATAL_ERROR "SOCI not found (missing: ${SOCI_MISSING}); apt-get install libsoci-dev libboost-dev libpq-dev")
  endif()
  return()
endif()
set(SOCI_FOUND TRUE)

if(NOT TARGET SOCI::core)
  add_library(SOCI::core UNKNOWN IMPORTED)
  set_target_properties(SOCI::core PROPERTIES IMPORTED_LOCATION "${SOCI_CORE_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${SOCI_INCLUDE_DIR};${SOCI_INCLUDE_DIR}/soci;${SOCI_BOOST_INCLUDE_DIR}")
  add_library(SOCI::sqlite3 UNKNOWN IMPORTED)
  set_target_properties(SOCI::sqlite3 PROPERTIES IMPORTED_LOCATION "${SOCI_SQLITE3_LIBRARY}"
    INTERFACE_LINK_LIBRARIES SOCI::core)
  add_library(SOCI::postgresql UNKNOWN IMPORTED)
  set_target_properties(SOCI::postgresql PROPERTIES IMPORTED_LOCATION "${SOCI_POSTGRESQL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${PostgreSQL_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "SOCI::core;${PostgreSQL_LIBRARIES}")
endif()
