# Writes the rowguard tool's man page (rowguard.1 and rowguard.1.gz) and its bash completion
# (completion/rowguard) into OUTPUT_DIR, from the tool's own command definitions.
# Run as: cmake -DTOOL=path/to/rowguard -DOUTPUT_DIR=... -P cli_docs.cmake
function(capture out)
  execute_process(COMMAND "${TOOL}" ${ARGN} OUTPUT_FILE "${out}" RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "rowguard ${ARGN} failed (${rc}): ${err}")
  endif()
endfunction()
file(MAKE_DIRECTORY "${OUTPUT_DIR}/completion")
capture("${OUTPUT_DIR}/rowguard.1" manpage)
capture("${OUTPUT_DIR}/completion/rowguard" completion bash)
# -n: no name or time stamp in the header, so the same page gzips to the same bytes.
execute_process(COMMAND gzip -9 -n -c "${OUTPUT_DIR}/rowguard.1" OUTPUT_FILE "${OUTPUT_DIR}/rowguard.1.gz"
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "gzip failed (${rc})")
endif()
