# Install components, pkg-config files and the Debian packages (`cpack -G DEB` in the build tree):
#   librowguard-dev (component dev): headers, the libraries, the CMake package and rowguard.pc;
#   rowguard (component cli): the command-line tool, its man page and bash completion, and the
#   schema scripts under /usr/share/rowguard/schema (in librowguard-dev when there is no CLI).
# Included from the top CMakeLists.txt after every target exists.

# --- pkg-config ------------------------------------------------------------------------------
# rowguard_pkgconfig(NAME DESCRIPTION text LIBS ... REQUIRES ... [CFLAGS ...]
#                    [DEPENDENCY_REQUIRES ...] [DEPENDENCY_LIBS ...]):
# writes NAME.pc into lib/pkgconfig beside the CMake package. The libraries a target links
# privately (DEPENDENCY_*) go to Requires.private/Libs.private when the target is a shared library,
# and to Requires/Libs when it is a static one: a static archive needs them at every link, and
# `pkg-config --libs` (without --static) is what users and build systems call. prefix= is filled
# in at install time, so it names the prefix installed into (cmake --install --prefix P; /usr in
# the packages).
function(rowguard_pkgconfig pc_name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "TARGET;DESCRIPTION"
                        "LIBS;REQUIRES;CFLAGS;DEPENDENCY_REQUIRES;DEPENDENCY_LIBS")
  get_target_property(type ${arg_TARGET} TYPE)
  set(pc_description "${arg_DESCRIPTION}")
  set(pc_libs ${arg_LIBS})
  set(pc_requires ${arg_REQUIRES})
  set(pc_requires_private "")
  set(pc_libs_private "")
  if(type STREQUAL "STATIC_LIBRARY")
    list(APPEND pc_requires ${arg_DEPENDENCY_REQUIRES})
    list(APPEND pc_libs ${arg_DEPENDENCY_LIBS})
  else()
    set(pc_requires_private ${arg_DEPENDENCY_REQUIRES})
    set(pc_libs_private ${arg_DEPENDENCY_LIBS})
  endif()
  list(JOIN pc_requires ", " pc_requires)
  list(JOIN pc_requires_private ", " pc_requires_private)
  list(JOIN pc_libs " " pc_libs)
  list(JOIN pc_libs_private " " pc_libs_private)
  set(pc_cflags "")
  foreach(flag IN LISTS arg_CFLAGS)
    string(APPEND pc_cflags " ${flag}")
  endforeach()
  set(ROWGUARD_PC_PREFIX "@ROWGUARD_PC_PREFIX@")  # kept for the install step below
  set(template ${PROJECT_BINARY_DIR}/pkgconfig/${pc_name}.pc.in)
  configure_file(${PROJECT_SOURCE_DIR}/cmake/rowguard.pc.in ${template} @ONLY)
  # Staged under a name of its destination: two installs at once (cpack and cmake --install, in
  # the tests) must not copy each other's file.
  install(CODE "
    file(READ \"${template}\" pc)
    string(REPLACE \"@ROWGUARD_PC_PREFIX@\" \"\${CMAKE_INSTALL_PREFIX}\" pc \"\${pc}\")
    string(MD5 destination \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}\")
    set(staged \"${PROJECT_BINARY_DIR}/pkgconfig/staged/\${destination}/${pc_name}.pc\")
    file(WRITE \"\${staged}\" \"\${pc}\")
    file(INSTALL DESTINATION \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig\" TYPE FILE FILES \"\${staged}\")"
    COMPONENT dev)
endfunction()

# The client libraries, by their pkg-config names where Debian ships a .pc file. SOCI has none
# (DESIGN.md), so its libraries are named; its headers need Boost's and libpq's.
set(rowguard_pc_requires fmt sqlite3)
set(rowguard_pc_libs -pthread)
if(ROWGUARD_WITH_POSTGRES)
  list(APPEND rowguard_pc_requires libpqxx)  # before libpq, which it uses
endif()
if(ROWGUARD_WITH_POSTGRES OR ROWGUARD_WITH_SOCI)
  list(APPEND rowguard_pc_requires libpq)
endif()
if(ROWGUARD_WITH_SOCI)
  list(APPEND rowguard_pc_libs -lsoci_postgresql -lsoci_sqlite3 -lsoci_core)
endif()
rowguard_pkgconfig(rowguard TARGET rowguard LIBS -lrowguard
  DESCRIPTION "Leases, version-checked balances and a read-through cache on SQLite and PostgreSQL (C++20)"
  DEPENDENCY_REQUIRES ${rowguard_pc_requires} DEPENDENCY_LIBS ${rowguard_pc_libs})
# The adapters name their client library in their header: it is theirs publicly.
if(ROWGUARD_WITH_POSTGRES)
  rowguard_pkgconfig(rowguard-postgres TARGET rowguard_postgres LIBS -lrowguard_postgres REQUIRES rowguard libpqxx
    DESCRIPTION "rowguard over a service's own libpqxx connections (rowguard/postgres.hpp: from_pqxx)")
endif()
if(ROWGUARD_WITH_SOCI)
  rowguard_pkgconfig(rowguard-soci TARGET rowguard_soci LIBS -lrowguard_soci -lsoci_core REQUIRES rowguard
    CFLAGS -I${SOCI_INCLUDE_DIR}/soci
    DESCRIPTION "rowguard over a service's own SOCI session (rowguard/soci.hpp: from_soci)")
endif()

# --- Debian packages ---------------------------------------------------------------------------
# Only as the top-level project: CPack's settings are the whole build's, a parent's own to make.
if(NOT ROWGUARD_TOP_LEVEL)
  return()
endif()
# The license as Debian states it: /usr/share/doc/PACKAGE/copyright, in the machine-readable format.
file(READ ${PROJECT_SOURCE_DIR}/LICENSE license)
string(REGEX REPLACE "^MIT License\n\nCopyright \\(c\\) [^\n]*\n\n" "" license "${license}")
string(REGEX REPLACE "\n\n" "\n.\n" license "${license}")
string(REGEX REPLACE "\n$" "" license "${license}")
string(REPLACE "\n" "\n " license " ${license}")
file(WRITE ${PROJECT_BINARY_DIR}/copyright
  "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
  "Upstream-Name: rowguard\n\n"
  "Files: *\nCopyright: 2026 the rowguard developers\nLicense: Expat\n${license}\n")

set(ROWGUARD_PACKAGE_MAINTAINER "rowguard developers <rowguard@invalid>" CACHE STRING
    "The Maintainer field of the Debian packages (cpack -G DEB)")
set(CPACK_PACKAGE_NAME rowguard)
set(CPACK_PACKAGE_VENDOR "the rowguard developers")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${ROWGUARD_PACKAGE_MAINTAINER}")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_STRIP_FILES ON)  # the tool without its debug information (static libraries keep theirs)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_COMPONENTS_ALL dev)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME librowguard-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# A description's first line is the package's synopsis.
string(CONCAT CPACK_DEBIAN_DEV_DESCRIPTION
       "leases, balances and a cache on SQLite and PostgreSQL: C++20 library\n"
       "Leases with fencing tokens, version-checked balances with idempotent transfers and a\n"
       "read-through cache table on SQLite and PostgreSQL (libpqxx, SOCI): the library (static\n"
       "unless built with BUILD_SHARED_LIBS), headers, CMake package and pkg-config files.\n"
       "MIT license.")
# The static library brings its client libraries' development packages to the link.
set(dev_depends libfmt-dev libsqlite3-dev pkg-config)
if(ROWGUARD_WITH_POSTGRES OR ROWGUARD_WITH_SOCI)
  list(APPEND dev_depends libpq-dev)
endif()
if(ROWGUARD_WITH_POSTGRES)
  list(APPEND dev_depends libpqxx-dev)
endif()
if(ROWGUARD_WITH_SOCI)
  list(APPEND dev_depends libsoci-dev libboost-dev)
endif()
list(JOIN dev_depends ", " CPACK_DEBIAN_DEV_PACKAGE_DEPENDS)
install(FILES ${PROJECT_BINARY_DIR}/copyright DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/librowguard-dev COMPONENT dev)
if(ROWGUARD_BUILD_TOOLS)
  list(APPEND CPACK_COMPONENTS_ALL cli)
  set(CPACK_DEBIAN_CLI_PACKAGE_NAME rowguard)
  set(CPACK_DEBIAN_CLI_PACKAGE_SECTION database)
  set(CPACK_DEBIAN_CLI_PACKAGE_SHLIBDEPS ON)  # Depends from the shared libraries it links (dpkg-shlibdeps)
  string(CONCAT CPACK_DEBIAN_CLI_DESCRIPTION
         "leases, balances and a cache on SQLite and PostgreSQL: command-line tool\n"
         "rowguard migrates the schema, runs commands under leases, moves money between accounts,\n"
         "reads and fills the cache table, runs sagas and two-phase commits, and serves Prometheus\n"
         "metrics and a status page, on SQLite or PostgreSQL. The schema scripts for a DBA are in\n"
         "/usr/share/rowguard/schema. MIT license.")
  install(FILES ${PROJECT_BINARY_DIR}/copyright DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/rowguard COMPONENT cli)
endif()
include(CPack)
