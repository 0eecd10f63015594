# The third-party dependencies other than LibTorch, from the system or from
# the pinned copies in third_party/ (versions and sources: third_party/README.md).
#
# TLOOP_VENDORED_DEPS (cache variable):
#   AUTO (default)  each header-only dependency (Boost.DLL, CLI11, doctest,
#                   nlohmann_json) and zlib from a compatible system package
#                   when find_package (QUIET) finds one, else the copy in
#                   third_party/; spdlog, toml++ and stb always from the copy,
#                   since their system packages are shared libraries that the
#                   installed (relocatable) prefix would then need at run time
#   ON              every dependency from third_party/; no system package is looked for
#   OFF             system packages only; a missing one stops the configure (REQUIRED)
# Under AUTO, -DCMAKE_DISABLE_FIND_PACKAGE_<Pkg>=ON takes the copy for that one
# (<Pkg>: Boost tomlplusplus spdlog CLI11 doctest nlohmann_json ZLIB stb).
# SHA-256 (PicoSHA2) has no system package: it is always the copy.
#
# Whichever is used, the build sees the same targets:
#   Boost::headers                  Boost.DLL (header-only; the copy is Linux-only, for BOOST_DLL_USE_STD_FS)
#   tomlplusplus::tomlplusplus      TOML++
#   spdlog::spdlog                  spdlog (the copy: header-only, with its bundled fmt)
#   CLI11::CLI11                    CLI11
#   doctest::doctest                doctest, and include(doctest) for doctest_discover_tests
#                                   (only when TLOOP_BUILD_TESTS is on)
#   nlohmann_json::nlohmann_json    JSON for Modern C++
#   ZLIB::ZLIB                      zlib (the copy: a static library with crc32, inflate and gz reading, no deflate)
#   tloop_third_party::stb          stb_image_write (Debian's libstb, or the copy with its implementation compiled in)
#   tloop_third_party::sha256       PicoSHA2 (#include <picosha2.h>)
# The copies' include directories are SYSTEM: their warnings are not ours.
# One status line per dependency says which was used.
include_guard(GLOBAL)

set(TLOOP_VENDORED_DEPS AUTO CACHE STRING
    "Third-party dependencies: AUTO (system package if found, else third_party/), ON (always third_party/), OFF (system only)")
set_property(CACHE TLOOP_VENDORED_DEPS PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${TLOOP_VENDORED_DEPS}" _tloop_deps_mode)
if(_tloop_deps_mode MATCHES "^(TRUE|YES|Y|1)$")
  set(_tloop_deps_mode ON)
elseif(_tloop_deps_mode MATCHES "^(FALSE|NO|N|0)$")
  set(_tloop_deps_mode OFF)
endif()
if(NOT _tloop_deps_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "TLOOP_VENDORED_DEPS must be AUTO, ON or OFF, not '${TLOOP_VENDORED_DEPS}'")
endif()

get_filename_component(TLOOP_THIRD_PARTY_DIR "${CMAKE_CURRENT_LIST_DIR}/../third_party" ABSOLUTE)

# _tloop_find(<Pkg> <find_package arguments>...): sets _tloop_system to TRUE when
# the system package is to be used. A macro, so that what find_package sets
# (variables, CMAKE_MODULE_PATH) lands in the includer's scope.
macro(_tloop_find pkg)
  set(_tloop_system FALSE)
  if(_tloop_deps_mode STREQUAL "OFF")
    find_package(${pkg} ${ARGN} REQUIRED)
    set(_tloop_system TRUE)
  elseif(_tloop_deps_mode STREQUAL "AUTO")
    find_package(${pkg} ${ARGN} QUIET)
    if(${pkg}_FOUND)
      set(_tloop_system TRUE)
    endif()
  endif()
endmacro()

# _tloop_find_linked(<Pkg> <find_package arguments>...): the same for a
# dependency whose system package is a shared library (Debian's spdlog, toml++
# and stb). Under AUTO the copy is used: a system .so would become a run-time
# dependency of the installed prefix, which must run when copied to another
# machine. OFF still takes the system package.
macro(_tloop_find_linked pkg)
  if(_tloop_deps_mode STREQUAL "OFF")
    _tloop_find(${pkg} ${ARGN})
  else()
    set(_tloop_system FALSE)
  endif()
endmacro()

# _tloop_report(<label> <version> <system?>)
function(_tloop_report label version system)
  if(system)
    message(STATUS "tloop: ${label} ${version} (system)")
  else()
    message(STATUS "tloop: ${label} ${version} (vendored)")
  endif()
endfunction()

# _tloop_header_target(<name> <alias> <include dir>): an INTERFACE target for a header-only copy.
function(_tloop_header_target name alias dir)
  add_library(${name} INTERFACE)
  target_include_directories(${name} SYSTEM INTERFACE "${dir}")
  add_library(${alias} ALIAS ${name})
endfunction()

# ---------------------------------------------------------------- Boost.DLL, CLI11, nlohmann_json
# _tloop_header_dependency(<Pkg> <min version> <label> <system version variable>
#                          <copy version> <target> <copy include dir>): a header-only
# dependency whose copy needs nothing but its include directory. A macro, as _tloop_find.
macro(_tloop_header_dependency pkg min label version_var copy_version alias dir)
  _tloop_find(${pkg} ${min})
  if(_tloop_system)
    _tloop_report("${label}" "${${version_var}}" TRUE)
  else()
    string(TOLOWER "tloop_third_party_${pkg}" _tloop_name)
    _tloop_header_target(${_tloop_name} ${alias} "${dir}")
    _tloop_report("${label}" "${copy_version}" FALSE)
  endif()
endmacro()

_tloop_header_dependency(Boost 1.74 "Boost.DLL" Boost_VERSION_STRING 1.74.0 Boost::headers
                         "${TLOOP_THIRD_PARTY_DIR}/boost/include")
_tloop_header_dependency(CLI11 2.1 CLI11 CLI11_VERSION 2.1.2 CLI11::CLI11 "${TLOOP_THIRD_PARTY_DIR}/cli11/include")
_tloop_header_dependency(nlohmann_json 3.11 nlohmann_json nlohmann_json_VERSION 3.11.2 nlohmann_json::nlohmann_json
                         "${TLOOP_THIRD_PARTY_DIR}/nlohmann_json/include")

# ---------------------------------------------------------------- TOML++
_tloop_find_linked(tomlplusplus 3.3)
if(_tloop_system)
  _tloop_report("toml++" "${tomlplusplus_VERSION}" TRUE)
else()
  _tloop_header_target(tloop_third_party_tomlplusplus tomlplusplus::tomlplusplus
                       "${TLOOP_THIRD_PARTY_DIR}/tomlplusplus/include")
  target_compile_features(tloop_third_party_tomlplusplus INTERFACE cxx_std_17)
  _tloop_report("toml++" "3.3.0" FALSE)
endif()

# ---------------------------------------------------------------- spdlog
_tloop_find_linked(spdlog 1.10)
if(_tloop_system)
  _tloop_report("spdlog" "${spdlog_VERSION}" TRUE)
else()
  # Header-only, with the fmt it bundles (8.1.1; spdlog/fmt/bundled/).
  find_package(Threads REQUIRED)
  _tloop_header_target(tloop_third_party_spdlog spdlog::spdlog "${TLOOP_THIRD_PARTY_DIR}/spdlog/include")
  target_link_libraries(tloop_third_party_spdlog INTERFACE Threads::Threads)
  _tloop_report("spdlog" "1.10.0 (bundled fmt 8.1.1)" FALSE)
endif()

# ---------------------------------------------------------------- doctest
if(NOT DEFINED TLOOP_BUILD_TESTS OR TLOOP_BUILD_TESTS)
  _tloop_find(doctest 2.4)
  if(_tloop_system)
    # Its package puts its directory, with doctest.cmake, on CMAKE_MODULE_PATH.
    _tloop_report("doctest" "${doctest_VERSION}" TRUE)
  else()
    _tloop_header_target(tloop_third_party_doctest doctest::doctest "${TLOOP_THIRD_PARTY_DIR}/doctest/include")
    # include(doctest) -> doctest_discover_tests
    list(APPEND CMAKE_MODULE_PATH "${TLOOP_THIRD_PARTY_DIR}/doctest/scripts/cmake")
    _tloop_report("doctest" "2.4.9" FALSE)
  endif()
endif()

# ---------------------------------------------------------------- zlib
_tloop_find(ZLIB 1.2.9)  # crc32_z is 1.2.9's
if(_tloop_system)
  _tloop_report("zlib" "${ZLIB_VERSION_STRING}" TRUE)
else()
  # crc32, adler32, inflate and gz reading; gz writing and deflate are left out
  # (NO_GZCOMPRESS). Static and PIC, linked into the plugins with hidden symbols.
  set(_tloop_zlib_dir "${TLOOP_THIRD_PARTY_DIR}/zlib")
  add_library(tloop_third_party_zlib STATIC
    ${_tloop_zlib_dir}/adler32.c ${_tloop_zlib_dir}/crc32.c ${_tloop_zlib_dir}/zutil.c
    ${_tloop_zlib_dir}/inflate.c ${_tloop_zlib_dir}/inffast.c ${_tloop_zlib_dir}/inftrees.c
    ${_tloop_zlib_dir}/gzlib.c ${_tloop_zlib_dir}/gzread.c ${_tloop_zlib_dir}/gzclose.c)
  set_target_properties(tloop_third_party_zlib PROPERTIES
    POSITION_INDEPENDENT_CODE ON C_VISIBILITY_PRESET hidden)
  target_include_directories(tloop_third_party_zlib SYSTEM PUBLIC "${_tloop_zlib_dir}")
  # What Debian's configured zconf.h says (unistd.h and stdarg.h are there), for
  # the library and its users alike.
  target_compile_definitions(tloop_third_party_zlib PUBLIC Z_HAVE_UNISTD_H Z_HAVE_STDARG_H PRIVATE NO_GZCOMPRESS)
  if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(tloop_third_party_zlib PRIVATE -w)  # not our code
  endif()
  add_library(ZLIB::ZLIB ALIAS tloop_third_party_zlib)
  _tloop_report("zlib" "1.3.1 (crc32, inflate, gz reading)" FALSE)
endif()

# ---------------------------------------------------------------- stb_image_write
# No CMake package: Debian's libstb-dev is its header in <include>/stb/ plus libstb.
# A shared library: like spdlog and toml++, only OFF takes it (see _tloop_find_linked).
set(_tloop_system FALSE)
if(_tloop_deps_mode STREQUAL "OFF")
  if(CMAKE_DISABLE_FIND_PACKAGE_stb)
    message(FATAL_ERROR "TLOOP_VENDORED_DEPS=OFF needs the system stb, but CMAKE_DISABLE_FIND_PACKAGE_stb is set")
  endif()
  find_path(STB_INCLUDE_DIR stb_image_write.h PATH_SUFFIXES stb REQUIRED)
  find_library(STB_LIBRARY stb REQUIRED)
  set(_tloop_system TRUE)
endif()
if(_tloop_system)
  add_library(tloop_third_party_stb INTERFACE)
  target_include_directories(tloop_third_party_stb SYSTEM INTERFACE "${STB_INCLUDE_DIR}")
  target_link_libraries(tloop_third_party_stb INTERFACE "${STB_LIBRARY}")
  _tloop_report("stb_image_write" "(${STB_LIBRARY})" TRUE)
else()
  # The implementation, compiled once (STB_IMAGE_WRITE_IMPLEMENTATION) in our own TU.
  add_library(tloop_third_party_stb STATIC "${TLOOP_THIRD_PARTY_DIR}/stb/tloop_stb_image_write.c")
  set_target_properties(tloop_third_party_stb PROPERTIES
    POSITION_INDEPENDENT_CODE ON C_VISIBILITY_PRESET hidden)
  target_include_directories(tloop_third_party_stb SYSTEM PUBLIC "${TLOOP_THIRD_PARTY_DIR}/stb")
  if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(tloop_third_party_stb PRIVATE -w)  # not our code
  endif()
  _tloop_report("stb_image_write" "1.16 (8b5f1f3)" FALSE)
endif()
add_library(tloop_third_party::stb ALIAS tloop_third_party_stb)

# ---------------------------------------------------------------- SHA-256
_tloop_header_target(tloop_third_party_sha256 tloop_third_party::sha256 "${TLOOP_THIRD_PARTY_DIR}/picosha2")
_tloop_report("SHA-256 PicoSHA2" "1.0.1" FALSE)

unset(_tloop_system)
