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
