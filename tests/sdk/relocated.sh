#!/usr/bin/env bash
# The installed package is complete and relocatable (CI, .ci/run): installs
# the build to a prefix, moves the prefix, hides this checkout's .venv
# (renamed, so nothing can reach LibTorch through its old path), then from the
# moved copy runs the default spec with every built-in plugin, and builds and
# runs out-of-tree plugins (a hook, a TORCH task, pkg-config) against it.
# Not a ctest test: hiding .venv would break tests running beside it.
#   tests/sdk/relocated.sh [BUILD_DIR]
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tloop-relocated.XXXXXX")
fail() { echo "FAIL (relocated install): $*" >&2; exit 1; }

# The build tools, as real binaries: pip's cmake entry point in .venv is a
# script naming .venv's python. A tool from .venv is used from where .venv is
# moved to below (the test is about the installed prefix, not the tools).
hidden="$src/.venv-hidden-$$"
tool() {  # name module-variable -> absolute path of the binary, after .venv is hidden
  local path; path=$(command -v "$1") || fail "no $1"
  [[ "$path" != "$src/.venv/"* ]] || path=$("$src/.venv/bin/python" -c "import os, $1; print(os.path.join($1.$2, '$1'))")
  echo "${path/#$src\/.venv\//$hidden/}"
}
[[ -d "$src/.venv/bin" ]] && PATH="$src/.venv/bin:$PATH"
cmake=$(tool cmake CMAKE_BIN_DIR)
ninja=$(tool ninja BIN_DIR)
[[ -x "$src/.venv/bin/python" ]] || fail "no .venv to hide"

cmake_args=(-G Ninja -DCMAKE_MAKE_PROGRAM="$ninja" -DCMAKE_BUILD_TYPE=Release)
mv "$src/.venv" "$hidden"
trap 'mv "$hidden" "$src/.venv"; rm -rf "$work"' EXIT
"$cmake" --install "$build" --prefix "$work/staged" >/dev/null
mv "$work/staged" "$work/moved"
prefix="$work/moved"
export TLOOP_PYTHON="$hidden/bin/python"  # the documented way to name the Python whose torch to use
export PATH="${PATH//$src\/.venv\/bin:/}"
unset TLOOP_PLUGIN_PATH

# Nothing installed names the build tree, the checkout's .venv or the prefix it was installed to.
if grep -rIl -e "$build" -e "$src/.venv" -e "$work/staged" "$prefix"; then fail "files above name the old paths"; fi
for f in "$prefix"/libexec/tloop/tloop "$prefix"/lib*/tloop/plugins/*.so; do
  if readelf -d "$f" | grep -E "RPATH|RUNPATH" | grep -qE "$src|$work"; then fail "$f has a run path into the build machine"; fi
done

# Every built-in plugin is installed and found from the moved prefix.
listed=$("$prefix/bin/tloop" plugins) || fail "tloop plugins: $listed"
for p in progress logging ema cuda_max_memory image_files checkpointing early_stopping tensorboard wandb regression_mlp digits_cnn; do
  grep -qE "^$p .*$prefix/lib[^ ]*/tloop/plugins/$p\.so" <<<"$listed" || fail "plugin $p not found in the moved prefix: $listed"
done

# The default spec: the built-in hooks, checkpointing with its best checkpoint among them.
spec="$work/default.toml"
cp "$src/configs/default.toml" "$spec"
ws="$work/ws"
out=$(cd "$work" && "$prefix/bin/tloop" run "$spec" --set "run.workspace=\"$ws\"" 2>&1) || { echo "$out"; fail "tloop run"; }
grep -q "finished 'digits': 600/600 steps" <<<"$out" || { echo "$out"; fail "the default spec did not finish"; }
for f in checkpoints/600/model.pt checkpoints/best ema_model.pt metrics.jsonl wandb/latest-run; do
  [[ -e "$ws/$f" ]] || fail "the run wrote no $f"
done
ls "$ws"/tb/events.out.tfevents.* >/dev/null || fail "no TensorBoard events"
[[ -n "$(ls -A "$ws/visualizations")" ]] || fail "no images"

# Out-of-tree plugins against the moved package.
for example in hook_cpp task_cpp; do
  "$cmake" -S "$src/examples/$example" -B "$work/$example" "${cmake_args[@]}" -DCMAKE_PREFIX_PATH="$prefix" \
    >"$work/$example.log" 2>&1 || { cat "$work/$example.log"; fail "configure examples/$example"; }
  "$cmake" --build "$work/$example" >>"$work/$example.log" 2>&1 || { cat "$work/$example.log"; fail "build examples/$example"; }
  out=$(TLOOP_PLUGIN_PATH="$work/$example/plugins" "$prefix/bin/tloop" run "$src/examples/$example/spec.toml" \
        --set "run.workspace=\"$work/ws_$example\"" 2>&1) || { echo "$out"; fail "run examples/$example"; }
  grep -q "finished 'spec'" <<<"$out" || { echo "$out"; fail "examples/$example did not finish"; }
done
pcdir=$(dirname "$(ls "$prefix"/lib*/pkgconfig/tloop.pc)")
inc=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags-only-I tloop)
inc=${inc#-I}
inc=${inc%% *}
[[ -f "$inc/tloop/plugin.h" && "$(cd "$inc" && pwd)" == "$prefix/include" ]] ||
  fail "pkg-config --cflags tloop (-I$inc) does not point at the moved prefix's include/"
echo "PASS: the installed package runs and builds plugins from a moved prefix without the checkout's .venv"
