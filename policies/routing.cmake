# policies/routing: score -> tier, and the cascade's confidence rule.
add_library(cascade_routing STATIC ${CMAKE_CURRENT_SOURCE_DIR}/routing.c)
target_include_directories(cascade_routing PUBLIC ${PROJECT_SOURCE_DIR})
