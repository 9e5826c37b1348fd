# Makes the Debian packages (cpack -G DEB) of the build, unpacks them with dpkg -x into a scratch
# root (never dpkg -i into the machine), and uses them as a Debian user would: examples/quickstart.cpp
# built with `pkg-config --cflags --libs rowguard`, examples/lock_demo.cpp with find_package, both
# run; the packaged `rowguard --version`; the man page, the bash completion (driven for a command
# and an option) and the schema scripts where Debian keeps them.
# Run as: cmake -DSOURCE_DIR=... -DBUILD_DIR=... -DWORK_DIR=... -DCPACK=... -DCXX=... -DEXPECT_CLI=ON|OFF
#         -P package_check.cmake
cmake_policy(VERSION 3.25)
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(root "${WORK_DIR}/root")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()
function(expect_file path)
  if(NOT EXISTS "${root}/${path}")
    message(FATAL_ERROR "the packages do not install /${path}")
  endif()
endfunction()

# The packages, into the scratch directory (-B), so the build tree keeps no package or staging files.
run("${CPACK}" -G DEB -B "${WORK_DIR}/packages" --config "${BUILD_DIR}/CPackConfig.cmake")
file(GLOB debs "${WORK_DIR}/packages/*.deb")
set(names "")
foreach(deb IN LISTS debs)
  run(dpkg-deb --field "${deb}" Package)
  string(STRIP "${out}" name)
  list(APPEND names ${name})
  run(dpkg-deb --field "${deb}" Maintainer Depends Description)
  if(NOT out MATCHES "Maintainer: [^\n]+<[^\n]+>" OR NOT out MATCHES "Depends: [^\n]+" OR NOT out MATCHES "MIT license")
    message(FATAL_ERROR "${name}: a field is missing (Maintainer, Depends, the license in Description):\n${out}")
  endif()
  run(dpkg -x "${deb}" "${root}")
  expect_file(usr/share/doc/${name}/copyright)
endforeach()
set(expected librowguard-dev)
if(EXPECT_CLI)
  list(APPEND expected rowguard)
endif()
list(SORT names)
if(NOT names STREQUAL expected)
  message(FATAL_ERROR "cpack -G DEB made ${names}, not ${expected}")
endif()
expect_file(usr/share/rowguard/schema/postgres/roles.sql)
expect_file(usr/lib/cmake/rowguard/rowguardConfig.cmake)
expect_file(usr/lib/pkgconfig/rowguard.pc)

# pkg-config: prefix= says /usr; --define-prefix takes it from where the .pc file lies instead.
set(ENV{PKG_CONFIG_PATH} "${root}/usr/lib/pkgconfig")
run(pkg-config --define-prefix --cflags --libs rowguard)
string(STRIP "${out}" flags)
separate_arguments(flags UNIX_COMMAND "${flags}")
run("${CXX}" -std=c++20 -o "${WORK_DIR}/quickstart" "${SOURCE_DIR}/examples/quickstart.cpp" ${flags})
run("${WORK_DIR}/quickstart" "sqlite:${WORK_DIR}/quickstart.db")

# find_package, from the same root.
file(WRITE "${WORK_DIR}/consumer/CMakeLists.txt"
     "cmake_minimum_required(VERSION 3.25)\nproject(rowguard_package_consumer CXX)\n"
     "find_package(rowguard CONFIG REQUIRED)\nadd_executable(lock_demo \"${SOURCE_DIR}/examples/lock_demo.cpp\")\n"
     "target_link_libraries(lock_demo PRIVATE rowguard::rowguard)\n")
run("${CMAKE_COMMAND}" -S "${WORK_DIR}/consumer" -B "${WORK_DIR}/consumer-build" "-DCMAKE_PREFIX_PATH=${root}/usr"
    "-DCMAKE_CXX_COMPILER=${CXX}" -DCMAKE_BUILD_TYPE=Release)
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/consumer-build")
run("${WORK_DIR}/consumer-build/lock_demo" "sqlite:${WORK_DIR}/lock_demo.db")

if(NOT EXPECT_CLI)
  message(STATUS "packages: ${names}; built and ran quickstart (pkg-config) and lock_demo (find_package)")
  return()
endif()
run("${root}/usr/bin/rowguard" --version)
if(NOT out MATCHES "^rowguard [0-9]+\\.[0-9]+\\.[0-9]+ \\(schema version [0-9]+\\)\n$")
  message(FATAL_ERROR "rowguard --version printed: ${out}")
endif()
expect_file(usr/share/man/man1/rowguard.1.gz)
run(gzip -dc "${root}/usr/share/man/man1/rowguard.1.gz")
string(REGEX MATCHALL "Exit codes:" tables "${out}")
list(LENGTH tables tables)
if(NOT out MATCHES "\\.TH ROWGUARD 1" OR NOT out MATCHES "\\.SS \"rowguard lock acquire\"" OR NOT tables EQUAL 1)
  message(FATAL_ERROR "the man page lacks its title or a command, or has the exit-code table ${tables} times")
endif()

# Bash completion as bash calls it: COMP_WORDS and COMP_CWORD set, then the function `complete`
# registered for rowguard, whose COMPREPLY is printed.
expect_file(usr/share/bash-completion/completions/rowguard)
set(script [=[
source "$1" || exit 1
fn=$(complete -p rowguard | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
shift
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
"$fn" rowguard "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
]=])
foreach(probe IN ITEMS "lock|rowguard;lo" "--ttl|rowguard;lock;acquire;--t" "--db|rowguard;lock;list;--d"
                       "acquire|rowguard;--db;x.db;lock;ac")
  string(REPLACE "|" ";" probe "${probe}")
  list(POP_FRONT probe want)
  run(bash -c "${script}" bash "${root}/usr/share/bash-completion/completions/rowguard" ${probe})
  string(REPLACE "\n" ";" got "${out}")
  if(NOT want IN_LIST got)
    message(FATAL_ERROR "bash completion of '${probe}' offered '${out}', not ${want}")
  endif()
endforeach()
message(STATUS "packages: ${names}; built and ran quickstart (pkg-config) and lock_demo (find_package); "
               "rowguard --version, man page, completion and schema scripts in place")
