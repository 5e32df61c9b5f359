# engines/native/runtime.cmake: the native inference runtime (issue 3).
#   cascade_native   loaders (llama2.c .bin, HF safetensors), CPU ops, forward pass,
#                    sampler, continuous-batching scheduler, the `native` engine,
#                    the llama2.c tokenizer
#   tools            cascade-generate, cascade-convert-llama2c, cascade-gen-model
#   tests            tests/unit/test_{ops,safetensors,llama2c_tok,native_*}.c
set(NATIVE_DIR ${CMAKE_CURRENT_LIST_DIR})
set(NATIVE_SOURCES threadpool.c dtype.c ops_cpu.c kvcache.c safetensors.c model.c forward.c
    sampler.c tokenizer_llama2c.c)
foreach(f convert.c synth.c sched.c prompt.c native_engine.c)
  if(EXISTS ${NATIVE_DIR}/${f})
    list(APPEND NATIVE_SOURCES ${f})
  endif()
endforeach()
list(TRANSFORM NATIVE_SOURCES PREPEND ${NATIVE_DIR}/)
add_library(cascade_native STATIC ${NATIVE_SOURCES})
target_include_directories(cascade_native PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(cascade_native PUBLIC cascade_tokenizer cascade_engine_iface
                      PkgConfig::JANSSON PkgConfig::LIBEVENT Threads::Threads m)
# The kernels are the hot loop of every decode step: build them at -O3 whatever
# the build type, so loops over constant tile shapes fully unroll into registers.
set_source_files_properties(${NATIVE_DIR}/ops_cpu.c PROPERTIES COMPILE_OPTIONS "-O3")

foreach(tool generate convert_llama2c gen_model)
  if(EXISTS ${NATIVE_DIR}/tools/${tool}.c)
    string(REPLACE "_" "-" exe "cascade-${tool}")
    add_executable(${exe} ${NATIVE_DIR}/tools/${tool}.c)
    target_link_libraries(${exe} PRIVATE cascade_native)
  endif()
endforeach()

# Unit tests (sources under tests/unit/, registered here so the runtime's
# tests build with it).
set(NATIVE_TEST_DIR ${PROJECT_SOURCE_DIR}/tests/unit)
foreach(t test_ops test_safetensors test_llama2c_tok test_native_model test_native_sampler test_native_sched
          test_native_engine)
  if(EXISTS ${NATIVE_TEST_DIR}/${t}.c)
    cascade_unit_test(${t} SOURCES ${NATIVE_TEST_DIR}/${t}.c LIBS cascade_native)
  endif()
endforeach()

# The runtime's benchmark (bench/native/; figures in bench/native/results.md).
if(EXISTS ${PROJECT_SOURCE_DIR}/bench/native/bench_native.c)
  add_executable(bench_native ${PROJECT_SOURCE_DIR}/bench/native/bench_native.c)
  target_link_libraries(bench_native PRIVATE cascade_native)
endif()
