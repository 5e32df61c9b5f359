# policies/stats.cmake: fleet statistics per tenant and minute (issue 8).
#   cascade_stats   policies/stats.c: per-worker accumulators flushed to Redis
#                   (or a 48 h ring in memory), and the series queries behind
#                   GET /admin/v1/stats
#   test_stats      tests/unit/test_stats.c, against a redis-server it starts
# Include after cache/ (the Redis client): include(policies/stats.cmake).
add_library(cascade_stats STATIC ${CMAKE_CURRENT_LIST_DIR}/stats.c)
target_include_directories(cascade_stats PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(cascade_stats PUBLIC cascade_cache cascade_common PkgConfig::LIBEVENT
                      PkgConfig::JANSSON OpenSSL::Crypto Threads::Threads)
# The route:<kind> fields are named by routing_kind_name() (routing.cmake,
# included after this file: the target is resolved when CMake generates).
target_link_libraries(cascade_stats PUBLIC cascade_routing)
if(EXISTS ${PROJECT_SOURCE_DIR}/tests/unit/test_stats.c)
  cascade_unit_test(test_stats SOURCES ${PROJECT_SOURCE_DIR}/tests/unit/test_stats.c LIBS cascade_stats)
  set_tests_properties(test_stats PROPERTIES TIMEOUT 120)
endif()
