# policies/judge.cmake: the cascade's rules (issue 16).
#   cascade_judge   policies/judge.c: keep or escalate a cheap answer, from its
#                   option letter's probabilities or its token logprobs
#   test_judge      tests/unit/test_judge.c
add_library(cascade_judge STATIC ${CMAKE_CURRENT_LIST_DIR}/judge.c)
target_include_directories(cascade_judge PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(cascade_judge PUBLIC cascade_common m)
if(EXISTS ${PROJECT_SOURCE_DIR}/tests/unit/test_judge.c)
  cascade_unit_test(test_judge SOURCES ${PROJECT_SOURCE_DIR}/tests/unit/test_judge.c LIBS cascade_judge)
endif()
# routing_settings carries the judge's settings, and the stats name their
# judgement fields by its reasons.
foreach(user cascade_routing cascade_stats)
  if(TARGET ${user})
    target_link_libraries(${user} PUBLIC cascade_judge)
  endif()
endforeach()
