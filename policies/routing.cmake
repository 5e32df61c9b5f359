# policies/routing: score -> tier (routing.c), and each tenant's own
# route-score distribution for routing shares (share.c).
add_library(cascade_routing STATIC ${CMAKE_CURRENT_SOURCE_DIR}/routing.c ${CMAKE_CURRENT_SOURCE_DIR}/share.c)
target_include_directories(cascade_routing PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(cascade_routing PUBLIC cascade_common m)
