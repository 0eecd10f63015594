# tloop_add_plugin(<name> SOURCES <src>... [TORCH] [LIBRARIES <lib>...]
#                  [INSTALL_DESTINATION <dir>])
#
# Builds <name>.so, a tloop plugin library: a MODULE with hidden visibility,
# no undefined symbols, linked to the plugin API and, when the plugin uses
# tensors (TORCH), to LibTorch. The library lands in TLOOP_PLUGIN_OUTPUT_DIR
# (default: <build dir>/plugins), a directory to put on TLOOP_PLUGIN_PATH.
# With INSTALL_DESTINATION, `cmake --install` also installs it there.
#
# LibTorch (TORCH) must be the one tloop was built against. It is found as
# find_package(Torch) finds it (Torch_DIR, CMAKE_PREFIX_PATH), else through
# the Python torch package: TLOOP_PYTHON (CMake or environment variable),
# else Python3_EXECUTABLE, else python3 on PATH.
#
# Used by tloop's own build and, through find_package(tloop), by plugins
# built out of tree.
function(tloop_add_plugin name)
  cmake_parse_arguments(ARG "TORCH" "INSTALL_DESTINATION" "SOURCES;LIBRARIES" ${ARGN})
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
    _tloop_find_torch()
    target_link_libraries(${name} PRIVATE torch)
  endif()
  # Every symbol resolved at link time: a missing one fails the build, not the run.
  # What static libraries bring in (zlib, ...) stays private to the plugin, so
  # that no other library's copy of those symbols can stand in for them.
  # -Bsymbolic-functions: the plugin's calls to functions it defines go to its
  # own copies. Instantiations of std:: templates are exported whatever the
  # visibility, and libraries LibTorch loads export theirs (cuSPARSELt's
  # std::vector<long>::emplace_back frees with free() what operator new
  # allocated: AddressSanitizer caught a plugin bound to it).
  target_link_options(${name} PRIVATE "LINKER:--no-undefined" "LINKER:--exclude-libs,ALL"
                      "LINKER:-Bsymbolic-functions")
  if(CMAKE_CXX_COMPILER_LOADED)
    tloop_link_shared_libstdcxx_first(${name} PRIVATE)
  endif()
  if(ARG_INSTALL_DESTINATION)
    install(TARGETS ${name} LIBRARY DESTINATION ${ARG_INSTALL_DESTINATION})
  endif()
endfunction()

# tloop_link_shared_libstdcxx_first(<target> PRIVATE|INTERFACE)
#
# Links <target> (or, with INTERFACE, whoever links it) to the shared
# libstdc++.so.6 ahead of everything else, so that the C++ standard library's
# symbols bind to it. The torch wheel's libtorch.so and libtorch_cpu.so export
# statically linked copies of std::filesystem (pytorch/pytorch#133437), and
# libtorch.so's is incomplete: std::filesystem::remove_all there jumps to
# address 0. A program that finds libtorch.so first calls it. That happens
# when libstdc++ comes after LibTorch in the link, and always with a compiler
# that links libstdc++ statically (then the link takes whatever it meets first
# on the command line, libtorch.so, and no libstdc++.so is loaded ahead of it).
# LibTorch itself needs libstdc++.so.6, so naming it costs nothing.
function(tloop_link_shared_libstdcxx_first target scope)
  if(NOT DEFINED TLOOP_SHARED_LIBSTDCXX_LINKS)
    include(CheckCXXSourceCompiles)
    set(CMAKE_REQUIRED_LINK_OPTIONS "-Wl,--push-state,--no-as-needed" "-l:libstdc++.so.6" "-Wl,--pop-state")
    set(CMAKE_REQUIRED_QUIET ON)
    check_cxx_source_compiles("#include <string>\nint main() { return static_cast<int>(std::string(\"x\").size()) - 1; }"
                              TLOOP_SHARED_LIBSTDCXX_LINKS)
    if(NOT TLOOP_SHARED_LIBSTDCXX_LINKS)
      message(WARNING "tloop: the C++ compiler cannot link libstdc++.so.6 by name (-l:libstdc++.so.6); "
                      "programs and plugins may bind std:: symbols to LibTorch's partial copies and crash")
    endif()
  endif()
  if(TLOOP_SHARED_LIBSTDCXX_LINKS)
    target_link_options(${target} ${scope} "LINKER:--push-state,--no-as-needed" "-l:libstdc++.so.6" "LINKER:--pop-state")
  endif()
endfunction()

# Makes the `torch` target available (see above), once per project.
macro(_tloop_find_torch)
  if(NOT TARGET torch)
    find_package(Torch QUIET)
    if(NOT Torch_FOUND)
      if(TLOOP_PYTHON)
        set(_tloop_python "${TLOOP_PYTHON}")
      elseif(DEFINED ENV{TLOOP_PYTHON})
        set(_tloop_python "$ENV{TLOOP_PYTHON}")
      elseif(Python3_EXECUTABLE)
        set(_tloop_python "${Python3_EXECUTABLE}")
      else()
        find_program(_tloop_python python3 REQUIRED)
      endif()
      execute_process(COMMAND "${_tloop_python}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                      OUTPUT_VARIABLE _tloop_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
                      RESULT_VARIABLE _tloop_torch_result ERROR_QUIET)
      if(NOT _tloop_torch_result EQUAL 0)
        message(FATAL_ERROR "tloop_add_plugin(... TORCH): no LibTorch found: set Torch_DIR, or TLOOP_PYTHON "
                            "to a Python that has torch (tried '${_tloop_python}')")
      endif()
      find_package(Torch REQUIRED PATHS "${_tloop_torch_prefix}" NO_DEFAULT_PATH)
    endif()
    if(TLOOP_TORCH_VERSION AND NOT Torch_VERSION VERSION_EQUAL TLOOP_TORCH_VERSION)
      message(FATAL_ERROR "tloop was built against LibTorch ${TLOOP_TORCH_VERSION}, but the LibTorch found "
                          "(${Torch_DIR}) is ${Torch_VERSION}: plugins must use the same one")
    endif()
  endif()
endmacro()
