# engines/native/tokenizer.cmake: the tokenizers, the DeepSeek-V3 chat template,
# the cascade-tokenize CLI and their tests (issue 4).
# cascade_tokenizer holds the shared tokenizer interface (tokenizer.c), the
# tokenizer.json BPE and the chat template; the llama2.c tokenizer lives in the
# native runtime's library.
add_library(cascade_tokenizer STATIC
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.c
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_bpe.c
  ${CMAKE_CURRENT_LIST_DIR}/chat_template.c)
target_include_directories(cascade_tokenizer PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(cascade_tokenizer PUBLIC PkgConfig::JANSSON PkgConfig::PCRE2 Threads::Threads)

add_executable(cascade-tokenize ${CMAKE_CURRENT_LIST_DIR}/tools/cascade_tokenize.c)
target_link_libraries(cascade-tokenize PRIVATE cascade_tokenizer)

# Unit tests (tests/unit/test_tokenizer*.c). The two that need the DeepSeek
# tokenizer.json from node_modules report SKIP without it (tests/unit/test.h).
cascade_unit_test(test_tokenizer
  SOURCES ${PROJECT_SOURCE_DIR}/tests/unit/test_tokenizer.c LIBS cascade_tokenizer)
cascade_unit_test(test_tokenizer_bpe
  SOURCES ${PROJECT_SOURCE_DIR}/tests/unit/test_tokenizer_bpe.c LIBS cascade_tokenizer)
cascade_unit_test(test_tokenizer_chat
  SOURCES ${PROJECT_SOURCE_DIR}/tests/unit/test_tokenizer_chat.c LIBS cascade_tokenizer)

# Reference tests: cascade-tokenize against the npm package's JavaScript
# tokenizer, with the reference ids computed by Node in the test run.
find_program(CASCADE_NODE node)
if(CASCADE_NODE)
  foreach(mode routing edge chat cli fuzz)
    add_test(NAME tokenizer_reference_${mode}
             COMMAND ${CASCADE_NODE} ${PROJECT_SOURCE_DIR}/tests/tokenizer/compare.mjs ${mode})
    set_tests_properties(tokenizer_reference_${mode} PROPERTIES
      LABELS reference SKIP_RETURN_CODE 77 ENVIRONMENT
      "CASCADE_SOURCE_DIR=${PROJECT_SOURCE_DIR};CASCADE_SHARED_DIR=${PROJECT_SOURCE_DIR}/../shared;CASCADE_BUILD_DIR=${PROJECT_BINARY_DIR};CASCADE_TOKENIZE=$<TARGET_FILE:cascade-tokenize>")
  endforeach()
else()
  message(STATUS "cascade: node not found; tokenizer reference tests are not registered")
endif()

# The encode benchmark (bench/tokenizer/; run by bench/tokenizer/bench.mjs).
add_executable(bench_tokenizer ${PROJECT_SOURCE_DIR}/bench/tokenizer/bench_tokenizer.c)
target_link_libraries(bench_tokenizer PRIVATE cascade_tokenizer)
