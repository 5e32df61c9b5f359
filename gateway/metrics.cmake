# gateway/metrics.cmake: Prometheus metrics for GET /metrics (issue 8).
#   cascade_metrics   gateway/metrics.c (lock-free counters, text exposition)
#   test_metrics      tests/unit/test_metrics.c (also runs `promtool check
#                     metrics` on the output when promtool is installed)
#   bench_stats       bench/stats/bench_stats.c
# Include from gateway/CMakeLists.txt, after policies/: include(${CMAKE_CURRENT_SOURCE_DIR}/metrics.cmake)
add_library(cascade_metrics STATIC ${CMAKE_CURRENT_LIST_DIR}/metrics.c)
target_include_directories(cascade_metrics PUBLIC ${PROJECT_SOURCE_DIR})
# The attempt counters are labelled by the remote engine's outcome names.
target_link_libraries(cascade_metrics PUBLIC cascade_common cascade_remote cascade_routing PkgConfig::JANSSON)
if(EXISTS ${PROJECT_SOURCE_DIR}/tests/unit/test_metrics.c)
  cascade_unit_test(test_metrics SOURCES ${PROJECT_SOURCE_DIR}/tests/unit/test_metrics.c
                    LIBS cascade_metrics Threads::Threads)
endif()
# bench/stats/bench_stats.c: the cost of recording, rendering, flushing and
# querying (results in bench/stats/results.md).
if(TARGET cascade_stats AND EXISTS ${PROJECT_SOURCE_DIR}/bench/stats/bench_stats.c)
  add_executable(bench_stats ${PROJECT_SOURCE_DIR}/bench/stats/bench_stats.c)
  target_include_directories(bench_stats PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(bench_stats PRIVATE cascade_stats cascade_metrics)
endif()
