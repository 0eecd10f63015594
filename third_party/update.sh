#!/usr/bin/env bash
# Re-creates the pinned copies in third_party/ from upstream git repositories.
#
#   third_party/update.sh SRC_DIR [NAME...]
#
# SRC_DIR holds one clone per upstream repository, named <owner>+<name> (a bare
# clone, a work tree, or a folder with the clone in <owner>+<name>/repo); a
# missing one is cloned there. NAME is one of: tomlplusplus spdlog cli11
# doctest nlohmann_json stb picosha2 zlib boost (default: all). Each copy is
# taken from its pinned tag (or commit), checked against the commit recorded
# below; to update one, change its pin here, run this, rebuild, test, and
# update the table in third_party/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -ge 1 ]] || { sed -n '2,12p' "${BASH_SOURCE[0]}" >&2; exit 2; }
src_dir=$(mkdir -p "$1" && cd "$1" && pwd)
shift
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(tomlplusplus spdlog cli11 doctest nlohmann_json stb picosha2 zlib boost)

# ------------------------------------------------------------------ pins
# name          repository            ref                                       commit
pins=(
  "tomlplusplus  marzer/tomlplusplus   v3.3.0                                    c635f218c0aefc801d9748841930365e54fe3089"
  "spdlog        gabime/spdlog         v1.10.0                                   76fb40d95455f249bd70824ecfcae7a8f0930fa3"
  "cli11         CLIUtils/CLI11        v2.1.2                                    70f8072f9dd2292fd0b9f9e5f58e279f60483ed3"
  "doctest       doctest/doctest       v2.4.9                                    b7c21ec5ceeadb4951b00396fc1e4642dd347e5f"
  "nlohmann_json nlohmann/json         v3.11.2                                   bc889afb4c5bf1c0d8ee29ef35eaaf4c8bef8a5d"
  "stb           nothings/stb          8b5f1f37b5b75829fc72d38e7b5d4bcbf8a26d55  8b5f1f37b5b75829fc72d38e7b5d4bcbf8a26d55"
  "picosha2      okdshin/PicoSHA2      v1.0.1                                    161cb3fc4170fa7a3eca9e582cebd27cc4d1fe29"
  "zlib          madler/zlib           v1.3.1                                    51b7f2abdade71cd9bb0e7a373ef2610ec6f9daf"
  "boost         boostorg/boost        boost-1.74.0                              a7090e8ce184501cfc9e80afa6cafb5bfd3b371c"
)
# The Boost libraries whose headers Boost.DLL needs (their own repositories,
# all at the same boost-X.Y.Z tag as the superproject above).
boost_libs=(dll assert config core move predef static_assert throw_exception type_traits)

# ------------------------------------------------------------------ helpers
tmp_dirs=()
trap 'rm -rf "${tmp_dirs[@]}"' EXIT
repo_dir() {  # owner/name -> a git directory with its tags
  local d="$src_dir/${1/\//+}"
  if [[ -d $d/repo ]]; then echo "$d/repo"; return; fi
  if [[ ! -d $d ]]; then git clone -q --bare "https://github.com/$1.git" "$d" >&2; fi
  echo "$d"
}
checked() {  # owner/name ref commit -> the git directory, after checking ref is that commit
  local g; g=$(repo_dir "$1")
  local got; got=$(git -C "$g" rev-parse "$2^{commit}")
  [[ $got == "$3" ]] || { echo "$1 $2 is $got, pinned $3: update the pin on purpose" >&2; exit 1; }
  echo "$g"
}
take() {  # git-dir ref path dest
  mkdir -p "$(dirname "$4")"
  git -C "$1" show "$2:$3" >"$4"
}
take_tree() {  # git-dir ref prefix dest-root (keeps the path below the repository root)
  local f
  git -C "$1" ls-tree -r --name-only "$2" "$3" | while read -r f; do take "$1" "$2" "$f" "$4/$f"; done
}

# ------------------------------------------------------------------ one per dependency
update() {
  local name=$1 repo=$2 ref=$3 commit=$4 g out
  g=$(checked "$repo" "$ref" "$commit")
  out="$here/$name"
  echo "third_party/$name: $repo $ref ($commit)"
  case $name in
    tomlplusplus)
      rm -rf "$out/include" && take_tree "$g" "$ref" include/toml++ "$out"
      take "$g" "$ref" LICENSE "$out/LICENSE"
      # Upstream's fixes after the last release (README.md, "Patches").
      for p in "$here"/patches/tomlplusplus-*.patch; do patch -s -d "$out" -p1 <"$p"; done ;;
    spdlog)  # with its bundled fmt, header-only
      rm -rf "$out/include" && take_tree "$g" "$ref" include/spdlog "$out"
      take "$g" "$ref" LICENSE "$out/LICENSE" ;;
    cli11)
      rm -rf "$out/include" && take_tree "$g" "$ref" include/CLI "$out"
      take "$g" "$ref" LICENSE "$out/LICENSE" ;;
    doctest)  # the single header and the CMake module with doctest_discover_tests
      rm -rf "$out/include" "$out/scripts"
      take "$g" "$ref" doctest/doctest.h "$out/include/doctest/doctest.h"
      take "$g" "$ref" scripts/cmake/doctest.cmake "$out/scripts/cmake/doctest.cmake"
      take "$g" "$ref" scripts/cmake/doctestAddTests.cmake "$out/scripts/cmake/doctestAddTests.cmake"
      take "$g" "$ref" LICENSE.txt "$out/LICENSE.txt" ;;
    nlohmann_json)  # the single-header form
      rm -rf "$out/include"
      take "$g" "$ref" single_include/nlohmann/json.hpp "$out/include/nlohmann/json.hpp"
      take "$g" "$ref" single_include/nlohmann/json_fwd.hpp "$out/include/nlohmann/json_fwd.hpp"
      take "$g" "$ref" LICENSE.MIT "$out/LICENSE.MIT" ;;
    stb)  # tloop_stb_image_write.c beside it is ours, not upstream's
      take "$g" "$ref" stb_image_write.h "$out/stb_image_write.h"
      take "$g" "$ref" LICENSE "$out/LICENSE" ;;
    picosha2)
      take "$g" "$ref" picosha2.h "$out/picosha2.h"
      take "$g" "$ref" LICENSE "$out/LICENSE" ;;
    zlib)  # crc32, inflate and gz reading only (built with NO_GZCOMPRESS)
      rm -rf "$out" && mkdir -p "$out"
      local f
      for f in adler32.c crc32.c crc32.h gzclose.c gzguts.h gzlib.c gzread.c inffast.c inffast.h inffixed.h \
               inflate.c inflate.h inftrees.c inftrees.h zutil.c zutil.h zlib.h zconf.h LICENSE; do
        take "$g" "$ref" "$f" "$out/$f"
      done ;;
    boost) update_boost "$g" "$ref" "$out" ;;
    *) echo "unknown dependency $name" >&2; exit 2 ;;
  esac
}

# Boost: the headers that <boost/dll/shared_library.hpp> and
# <boost/dll/runtime_symbol_info.hpp> include with BOOST_DLL_USE_STD_FS on
# Linux, as g++ and clang++ see them (C++17 and C++20, with and without
# NDEBUG), plus all of boost/config (its compiler/stdlib/platform selection).
# bcp would copy every header named by any #include, taken or not
# (Boost.Filesystem, MPL, WinAPI...: about 1,000 files, 10 MB).
update_boost() {
  local super=$1 ref=$2 out=$3 tmp lib g commit cxx std nd
  tmp=$(mktemp -d)
  tmp_dirs+=("$tmp")
  for lib in "${boost_libs[@]}"; do
    commit=$(git -C "$super" rev-parse "$ref:libs/$lib")  # the submodule commit the release names
    g=$(checked "boostorg/$lib" "$ref" "$commit")
    git -C "$g" archive "$ref" include/boost | tar -x -C "$tmp"
  done
  cat >"$tmp/probe.cpp" <<'EOF'
#define BOOST_DLL_USE_STD_FS
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
EOF
  : >"$tmp/headers"
  for cxx in g++ clang++; do
    command -v "$cxx" >/dev/null || continue
    for std in c++17 c++20; do
      for nd in -UNDEBUG -DNDEBUG; do
        "$cxx" -std=$std $nd -isystem "$tmp/include" -H -fsyntax-only "$tmp/probe.cpp" 2>"$tmp/h" \
          || { cat "$tmp/h" >&2; exit 1; }
        if grep -v "$tmp/include/" "$tmp/h" | grep -q '/boost/'; then
          echo "a Boost header outside ${boost_libs[*]}:" >&2; grep '/boost/' "$tmp/h" | grep -v "$tmp/include/" >&2; exit 1
        fi
        grep -o "$tmp/include/boost/[^ ]*" "$tmp/h" | sed "s|$tmp/include/||" >>"$tmp/headers"
      done
    done
  done
  (cd "$tmp/include" && find boost/config -type f) >>"$tmp/headers"
  rm -rf "$out/include" && mkdir -p "$out/include"
  sort -u "$tmp/headers" | while read -r f; do
    mkdir -p "$out/include/$(dirname "$f")" && cp "$tmp/include/$f" "$out/include/$f"
  done
  take "$super" "$ref" LICENSE_1_0.txt "$out/LICENSE_1_0.txt"
}

for NAME in "${names[@]}"; do
  found=
  for p in "${pins[@]}"; do
    set -- $p
    if [[ $1 == "$NAME" ]]; then update "$@"; found=1; fi
  done
  [[ -n $found ]] || { echo "unknown dependency $NAME" >&2; exit 2; }
done
