#!/usr/bin/env bash
# Plugin SDK checks against the *installed* tloop, as a user outside this
# repository would build: install, then build and run the examples and the
# projects `tloop new` generates. Run by ctest (tests/CMakeLists.txt):
#   sdk.sh install|hook_cpp|task_cpp|hook_c|pkg_config|new_hook|new_task BUILD_DIR
set -euo pipefail
what=$1
build=$(cd "$2" && pwd)
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work="$build/sdk-test"
prefix="$work/prefix"
tloop="$prefix/bin/tloop"
export CCACHE_BASEDIR="$work" CCACHE_NOHASHDIR=1
cmake_args=(-G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release)
command -v ccache >/dev/null && cmake_args+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

fail() { echo "FAIL: $*" >&2; exit 1; }

build_example() {  # name
  rm -rf "$work/$1"
  cmake -S "$src/examples/$1" -B "$work/$1" "${cmake_args[@]}" >"$work/$1.configure.log" 2>&1 ||
    { cat "$work/$1.configure.log"; fail "configure examples/$1"; }
  cmake --build "$work/$1" || fail "build examples/$1"
}

# A run stopped halfway and resumed from its checkpoint ends with the model
# of an uninterrupted run, bit for bit.
check_resume_exact() {  # spec plugin_dir steps
  local spec=$1 plugins=$2 steps=$3 half=$(($3 / 2))
  local dir="$work/resume_$what"  # checks run side by side under ctest -j
  local with="$dir/spec.toml"
  rm -rf "$dir" && mkdir -p "$dir"
  { cat "$spec"; printf '\n[[hooks]]\nplugin = "checkpointing"\ninterval = %d\n' "$half"; } >"$with"
  local run=(env TLOOP_PLUGIN_PATH="$plugins" "$tloop" run "$with")
  "${run[@]}" --set "run.workspace=\"$dir/whole\"" >/dev/null 2>&1 || fail "resume check: the whole run"
  "${run[@]}" --set "run.workspace=\"$dir/parts\"" --set "trainer.max_steps=$half" >/dev/null 2>&1 ||
    fail "resume check: the first half"
  "${run[@]}" --set "run.workspace=\"$dir/parts\"" >"$dir/resume.log" 2>&1 || fail "resume check: the resumed half"
  grep -q "resumed from .* at step $half" "$dir/resume.log" || fail "resume check: the second run did not resume"
  "$TLOOP_PYTHON" -c 'import sys, torch
a, b = (torch.load(p, weights_only=True) for p in sys.argv[1:])
sys.exit(0 if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) else 1)' \
    "$dir/whole/checkpoints/$steps/model.pt" "$dir/parts/checkpoints/$steps/model.pt" ||
    fail "resume check: a resumed run of $spec ends with other weights than an uninterrupted one"
}

run_example() {  # name -> output in $out, workspace in $ws
  ws="$work/ws_$1"
  rm -rf "$ws"
  out=$(TLOOP_PLUGIN_PATH="$work/$1/plugins" "$tloop" run "$src/examples/$1/spec.toml" \
        --set "run.workspace=\"$ws\"" 2>&1) || { echo "$out"; fail "tloop run examples/$1/spec.toml"; }
  echo "$out"
}

case "$what" in
  install)
    rm -rf "$work"
    mkdir -p "$work"
    cmake --install "$build" --prefix "$prefix" >/dev/null
    # lib, lib64 or lib/<multiarch>: whatever GNUInstallDirs chose here.
    [[ -x "$tloop" && -n "$(ls "$prefix"/lib*/cmake/tloop/tloopConfig.cmake "$prefix"/lib/*/cmake/tloop/tloopConfig.cmake 2>/dev/null)" &&
       -f "$prefix/include/tloop/plugin.h" ]] || fail "install is incomplete"
    "$tloop" plugins | grep -qE "^digits_cnn .*$prefix/lib[^ ]*/tloop/plugins/digits_cnn\.so" ||
      fail "the installed tloop does not find its installed plugins"
    ;;
  hook_cpp)
    build_example hook_cpp
    run_example hook_cpp
    [[ "$(cut -d' ' -f1 "$ws/loss_tracker.txt" | tr '\n' ' ')" == "5 10 15 20 best " ]] ||
      { cat "$ws/loss_tracker.txt"; fail "loss_tracker.txt"; }
    grep -q "loss_tracker: best loss" <<<"$out" || fail "no log line from loss_tracker"
    ;;
  task_cpp)
    build_example task_cpp
    TLOOP_PLUGIN_PATH="$work/task_cpp/plugins" "$tloop" describe sine_task | grep -q "batch_size .*int (default 64" ||
      fail "tloop describe sine_task"
    run_example task_cpp
    grep -q "finished 'spec': 300/300 steps" <<<"$out" || fail "sine_task did not finish"
    rmse=$(tail -1 "$ws/metrics.jsonl" | sed -n 's/.*"train\/rmse":\([0-9.e-]*\).*/\1/p')
    awk -v r="$rmse" 'BEGIN { exit !(r != "" && r < 0.25) }' || fail "sine_task did not learn (rmse '$rmse')"
    check_resume_exact "$src/examples/task_cpp/spec.toml" "$work/task_cpp/plugins" 300
    ;;
  hook_c)
    build_example hook_c
    run_example hook_c
    [[ "$(cat "$ws/step_counter.txt")" == "plain-c steps=7" ]] || fail "step_counter.txt: $(cat "$ws/step_counter.txt")"
    ;;
  pkg_config)
    mkdir -p "$work/pkgconfig_plugin"
    cflags=$(PKG_CONFIG_PATH="$(dirname "$(ls "$prefix"/lib*/pkgconfig/tloop.pc "$prefix"/lib/*/pkgconfig/tloop.pc 2>/dev/null | head -1)")" \
             pkg-config --cflags tloop)
    cc -shared -fPIC -fvisibility=hidden $cflags "$src/examples/hook_c/step_counter.c" \
      -o "$work/pkgconfig_plugin/step_counter.so" || fail "cc with pkg-config --cflags tloop"
    "$tloop" plugins --path "$work/pkgconfig_plugin" | grep -q "^step_counter .*hook" ||
      fail "the pkg-config-built plugin does not load"
    ;;
  new_hook|new_task)
    kind=${what#new_}
    name="my$kind"
    rm -rf "$work/$name"
    (cd "$work" && "$tloop" new "$kind" "$name") || fail "tloop new $kind $name"
    cmake -S "$work/$name" -B "$work/$name/build" "${cmake_args[@]}" >/dev/null || fail "configure $name"
    cmake --build "$work/$name/build" || fail "build $name"
    ctest --test-dir "$work/$name/build" --output-on-failure || fail "the generated test of $name"
    TLOOP_PLUGIN_PATH="$work/$name/build/plugins" "$tloop" describe "$name" | grep -q "($kind plugin)" ||
      fail "tloop describe $name"
    if [[ $kind == task ]]; then check_resume_exact "$work/$name/test/spec.toml" "$work/$name/build/plugins" 200; fi
    ;;
  *) fail "unknown check '$what'" ;;
esac
echo "PASS: $what"
