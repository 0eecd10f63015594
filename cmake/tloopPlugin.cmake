# tloop_add_plugin(<name> SOURCES <src>... [TORCH] [LIBRARIES <lib>...])
#
# Builds <name>.so, a tloop plugin library: a MODULE with hidden visibility,
# no undefined symbols, linked to the plugin API and, when the plugin uses
# tensors (TORCH), to LibTorch. The library lands in TLOOP_PLUGIN_OUTPUT_DIR
# (default: <build dir>/plugins), a directory to put on TLOOP_PLUGIN_PATH.
#
# Used by tloop's own build and, through find_package(tloop), by plugins
# built out of tree.
function(tloop_add_plugin name)
  cmake_parse_arguments(ARG "TORCH" "" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "tloop_add_plugin(${name}): SOURCES is required")
  endif()
  if(NOT TLOOP_PLUGIN_OUTPUT_DIR)
    set(TLOOP_PLUGIN_OUTPUT_DIR ${CMAKE_BINARY_DIR}/plugins)
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    LIBRARY_OUTPUT_DIRECTORY ${TLOOP_PLUGIN_OUTPUT_DIR}
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    POSITION_INDEPENDENT_CODE ON)
  if(CMAKE_CXX_COMPILER_LOADED)
    target_compile_features(${name} PRIVATE cxx_std_17)
  endif()
  target_link_libraries(${name} PRIVATE tloop::plugin_api ${ARG_LIBRARIES})
  if(ARG_TORCH)
    if(NOT TORCH_LIBRARIES)
      find_package(Torch REQUIRED)
    endif()
    target_link_libraries(${name} PRIVATE ${TORCH_LIBRARIES})
  endif()
  # Every symbol resolved at link time: a missing one fails the build, not the run.
  target_link_options(${name} PRIVATE -Wl,--no-undefined)
endfunction()
