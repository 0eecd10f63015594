"""The bad-input corpus (tests/bad_inputs/*.toml): every case runs through
both `tloop validate` and `tloop run`, and each must give the case's exit
code and the key parts of its message, without a crash or a stack trace,
and leave the workspace as the rules below say.

A case file holds `[[case]]` tables (and optionally `[templates]`, named
texts that any string of the file takes in as `{tpl:NAME}`):

  name       unique in its file; the test id is <file stem>/<name>
  spec       the run spec, written to <case>/spec.toml; the commands run in
             <case>, so `workspace = "ws"` is <case>/ws
  set        --set overrides, given to both commands
  argv       instead of `{cmd} {spec}` and the overrides: the whole command
             line after the binary (CLI cases); `{cmd}` is validate, then run
  env        extra environment variables (TLOOP_PLUGIN_PATH is the test
             plugin directory unless a case sets it)
  exit       the exit code of `run`, and of `validate` unless run_only
  message    substrings that the output of `run` (and of `validate`, unless
             run_only) must contain: the key part, with file:line:column or
             the key path wherever the problem has one
  run_only   why only a run can find the problem (a checkpoint's contents,
             a signal, what the task does in a step, a workspace in use...):
             `validate` must then exit 0, and it is not expected to name it
  setup, in this order:
    files    {path: text} written into <case>
    dirs     [path] directories made in <case>
    copy     {dest: source} files copied into <case> (plugins, say)
    truncate {path: bytes or "half"} files of <case> cut short
    symlinks {path: target}
    chmod    {path: octal mode} (a plugin directory every user can write)
    prior    a spec run (to exit 0) in <case> before the case: an earlier run
             whose workspace and checkpoints the case must not harm
    damage   [{path, op, ...}] changes to the files a prior run left: op is
             flip (xor one byte at `at`), truncate (to `size`), delete,
             write / append (`text`), mkdir, json_del (`key` of a JSON
             object) or reseal (recompute a checkpoint directory's
             manifest.json, so that a change passes its checksums)
    lock     true: the test holds <case>/ws/.tloop.lock as a running tloop
             would (flock, "pid <its pid>"), for both commands
    signal   {name, after_step} or {name, output_contains}: `run` in the
             background, sent the signal once ws/metrics.jsonl has a row of a
             step >= after_step, or once its output has the text (observed
             progress, never a fixed wait)
  timeout    seconds each command may take, when a case must not wait
             PROGRESS_DEADLINE_S for a hang it expects to find
  moves      {from: to} paths under <case> that the run moves as documented
             (a damaged checkpoint moved aside, never deleted)
  absent     globs under the case's parent directory that must not exist
             afterwards (a file written outside the workspace)

Placeholders in every string: {cmd}, {spec} (the absolute spec path), {case}
(the case directory), {ws} (<case>/ws, absolute), {test_plugins},
{bad_plugins} (TLOOP_BAD_PLUGIN_DIR), {builtin_plugins} (build/plugins),
{pid} (this process, which holds the lock of a `lock` case), {tpl:NAME}.

Exit codes (runtime/exit_codes.h, README "The CLI"): 2 for bad input - the
spec, --set, the command line, plugin files and descriptors, the files,
environment and workspace the user gives, a checkpoint that cannot be used, a
plugin's refusal of its options (docs/plugins.md, "Errors"); 1 for a failure
while training that is not the user's input (a task or hook that fails or
returns what it must not); 128+N after signal N; 0 for success.

What a command may change in <case> (everything in it is snapshot: names,
sizes and SHA-256 of every file, before each command):

  * `validate` writes nothing, ever: <case> is byte for byte the same after.
  * A `run` refused for a problem that validate finds (a case that is not
    run_only) writes nothing either: "nothing is created in the workspace"
    (README, "Run spec").
  * A run refused for a problem only a run can find (run_only, exit code 2)
    changes nothing but its log, whenever it is refused: it may
    create <case>/ws, ws/logs and ws/.tloop.lock (the lock file, whose
    content names the holder) and create or append to ws/logs/tloop.log
    (what was there before stays, as a prefix). Every other file, in the
    workspace and out of it - checkpoints, `latest`, spec.resolved.toml,
    metrics.jsonl - stays as it was, and no other file appears; the only
    exceptions are the case's `moves`. So a refused run never replaces the
    resolved spec or metrics of the run before it.
  * A run that trained (exit 0, 1 or 128+N) may write whatever training
    writes, but every file inside a checkpoint directory that existed before
    (ws/checkpoints/<name>/...) is unchanged, or moved as `moves` says.

Every command has a timeout far above its time on a slow machine
(PROGRESS_DEADLINE_S); only a hang reaches it.
"""
import fcntl
import fnmatch
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
import tomllib
import zlib

import pytest

from conftest import CLI, PROGRESS_DEADLINE_S, TEST_PLUGINS

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "bad_inputs"
BAD_PLUGINS = os.environ.get("TLOOP_BAD_PLUGIN_DIR", str(pathlib.Path(TEST_PLUGINS).parent / "bad_plugins"))
BUILTIN_PLUGINS = str(pathlib.Path(CLI).resolve().parent.parent / "plugins")
AREAS = {"spec", "set", "cli", "plugins", "checkpoints", "workspace", "signals", "task", "eval"}
CASE_KEYS = {"name", "spec", "set", "argv", "env", "exit", "message", "run_only", "files", "dirs", "copy",
             "truncate", "symlinks", "chmod", "prior", "damage", "lock", "signal", "moves", "absent", "timeout"}
# What no message of tloop may contain: a crash, an uncaught exception, a C++
# or Python stack trace (LibTorch's c10::Error carries one).
CRASH_MARKERS = ["terminate called", "what():", "Exception raised from", "frame #0:",
                 "Traceback (most recent call last)", "unknown exception"]


# TLOOP_BAD_INPUTS_AREAS=spec,set runs those files' cases only: ctest runs
# one test per area (tests/CMakeLists.txt), side by side.
ONLY_AREAS = [a for a in os.environ.get("TLOOP_BAD_INPUTS_AREAS", "").split(",") if a]


def load_cases(only=()):
    cases = []
    for file in sorted(CORPUS.glob("*.toml")):
        if only and file.stem not in only:
            continue
        data = tomllib.loads(file.read_text())
        templates = data.get("templates", {})
        for case in data.get("case", []):
            case = dict(case, area=file.stem, templates=templates)
            cases.append(pytest.param(case, id=f"{file.stem}/{case['name']}"))
    return cases


ALL_CASES = load_cases()
CASES = load_cases(ONLY_AREAS) if ONLY_AREAS else ALL_CASES


def test_the_corpus_covers_every_area():
    ids = [p.id for p in ALL_CASES]
    assert len(ids) >= 80, len(ids)
    assert len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1]
    assert {p.values[0]["area"] for p in ALL_CASES} == AREAS
    assert set(ONLY_AREAS) <= AREAS, ONLY_AREAS
    for p in ALL_CASES:
        case = p.values[0]
        assert set(case) - {"area", "templates"} <= CASE_KEYS, (p.id, set(case) - CASE_KEYS)
        assert isinstance(case.get("exit"), int) and case.get("message"), p.id
        assert "run_only" not in case or (isinstance(case["run_only"], str) and case["run_only"]), p.id


class Case:
    def __init__(self, case, root):
        self.c = case
        self.dir = root / "case"
        self.out = root / "runner-output"  # of background runs, outside the snapshot
        self.timeout = case.get("timeout", PROGRESS_DEADLINE_S)
        self.dir.mkdir()
        self.out.mkdir()
        self.values = {
            "spec": str(self.dir / "spec.toml"),
            "case": str(self.dir),
            "ws": str(self.dir / "ws"),
            "test_plugins": TEST_PLUGINS,
            "bad_plugins": BAD_PLUGINS,
            "builtin_plugins": BUILTIN_PLUGINS,
            "pid": str(os.getpid()),
        }

    def sub(self, value):
        """Placeholders filled, in a string or in each string of a list or table."""
        if isinstance(value, list):
            return [self.sub(v) for v in value]
        if isinstance(value, dict):
            return {self.sub(k): self.sub(v) for k, v in value.items()}
        if not isinstance(value, str):
            return value
        value = re.sub(r"\{tpl:([A-Za-z0-9_]+)\}", lambda m: self.c["templates"][m.group(1)], value)
        for key, v in self.values.items():
            value = value.replace("{" + key + "}", v)
        return value

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env.update({"TLOOP_PLUGIN_PATH": TEST_PLUGINS, "CUDA_VISIBLE_DEVICES": ""})
        env.update(self.sub(self.c.get("env", {})))
        return env

    def argv(self, cmd):
        if "argv" in self.c:
            args = [a.replace("{cmd}", cmd) for a in self.sub(self.c["argv"])]
        else:
            args = [cmd, self.values["spec"]]
            for s in self.sub(self.c.get("set", [])):
                args += ["--set", s]
        return [CLI] + args

    def run(self, args, what):
        try:
            r = subprocess.run(args, cwd=self.dir, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", timeout=self.timeout)
        except subprocess.TimeoutExpired as e:
            output = e.output.decode(errors="replace") if isinstance(e.output, bytes) else e.output or ""
            pytest.fail(f"{what}: no exit after {self.timeout} s (a hang): {' '.join(args)}\n{output[-4000:]}")
        return r.returncode, r.stdout

    # -- set-up ----------------------------------------------------------------
    def setup(self):
        c = self.c
        for path, text in self.sub(c.get("files", {})).items():
            (self.dir / path).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / path).write_text(text)
        for path in self.sub(c.get("dirs", [])):
            (self.dir / path).mkdir(parents=True, exist_ok=True)
        for dest, source in self.sub(c.get("copy", {})).items():
            (self.dir / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.dir / dest)
        for path, size in self.sub(c.get("truncate", {})).items():
            file = self.dir / path
            os.truncate(file, file.stat().st_size // 2 if size == "half" else size)
        for path, target in self.sub(c.get("symlinks", {})).items():
            (self.dir / path).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, self.dir / path)
        for path, mode in self.sub(c.get("chmod", {})).items():
            os.chmod(self.dir / path, int(mode, 8))
        if "prior" in c:
            (self.dir / "prior.toml").write_text(self.sub(c["prior"]))
            code, output = self.run([CLI, "run", str(self.dir / "prior.toml")], "the prior run")
            assert code == 0, "the prior run failed:\n" + output
        for d in self.sub(c.get("damage", [])):
            self.damage(d)
        if "spec" in c:
            (self.dir / "spec.toml").write_text(self.sub(c["spec"]))

    def damage(self, d):
        path = self.dir / d["path"]
        op = d["op"]
        if op == "flip":
            data = bytearray(path.read_bytes())
            data[d.get("at", 100)] ^= 0x5A
            path.write_bytes(bytes(data))
        elif op == "truncate":
            os.truncate(path, d["size"])
        elif op == "delete":
            path.unlink()
        elif op == "write":
            path.write_text(d["text"])
        elif op == "append":
            with open(path, "a") as f:
                f.write(d["text"])
        elif op == "mkdir":
            path.mkdir(parents=True)
        elif op == "json_del":
            obj = json.loads(path.read_text())
            del obj[d["key"]]
            path.write_text(json.dumps(obj, indent=1))
        elif op == "reseal":
            manifest = json.loads((path / "manifest.json").read_text())
            for name in manifest["files"]:
                data = (path / name).read_bytes()
                manifest["files"][name] = {"size": len(data), "crc32": zlib.crc32(data)}
            (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
        else:
            raise ValueError(f"unknown damage op {op!r}")

    # -- running -----------------------------------------------------------------
    def run_with_signal(self, args):
        """`run` in the background, signalled once metrics.jsonl shows the step, or the output the text, asked for."""
        sig = getattr(signal, self.c["signal"]["name"])
        log = self.out / "run.log"
        if "after_step" in self.c["signal"]:
            target = self.c["signal"]["after_step"]
            what = f"a row of step {target} in ws/metrics.jsonl"
            ready = lambda: logged_step_reached(self.dir / "ws" / "metrics.jsonl", target)  # noqa: E731
        else:
            text = self.c["signal"]["output_contains"]
            what = f"{text!r} in the output"
            ready = lambda: text in log.read_text(errors="replace")  # noqa: E731
        with open(log, "w") as out:
            proc = subprocess.Popen(args, cwd=self.dir, env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + self.timeout
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(f"the run exited with {proc.returncode} before {what}:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no {what} after {self.timeout} s")
                time.sleep(0.02)  # a poll interval, not a wait for progress
            proc.send_signal(sig)
            code = proc.wait(timeout=self.timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return code, log.read_text(errors="replace")


def logged_step_reached(metrics, target):
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        if line.endswith("}") and json.loads(line).get("step", 0) >= target:
            return True
    return False


def snapshot(root):
    """Every directory and file under root: kind, and for files size, SHA-256 and (for logs) the bytes."""
    out = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            data = path.read_bytes()
            out[rel] = ("file", len(data), hashlib.sha256(data).hexdigest(), data if rel.endswith(".log") else None)
    return out


def moved(before, moves):
    """The snapshot `before` with the case's documented moves applied."""
    out = {}
    for path, entry in before.items():
        for src, dst in moves.items():
            if path == src or path.startswith(src + "/"):
                path = dst + path[len(src):]
                break
        out[path] = entry
    return out


def same(a, b):
    return a is not None and b is not None and a[:3] == b[:3]


def workspace_problems(before, after, mode, moves):
    """What a command changed that it must not have (mode: strict, refused or trained)."""
    problems = []
    expected = before if mode == "strict" else moved(before, moves)
    for path in sorted(set(expected) | set(after)):
        old, new = expected.get(path), after.get(path)
        if mode == "trained":
            # Only the files of the checkpoints there before are protected.
            if re.match(r"ws/checkpoints/[^/]+/", path) and old is not None and old[0] == "file" and not same(old, new):
                problems.append(f"{path}: a previous checkpoint's file was {'changed' if new else 'removed'}")
            continue
        if old == new or same(old, new):
            continue
        if mode == "refused":
            if path in ("ws", "ws/logs") and old is None and new is not None and new[0] == "dir":
                continue
            if path == "ws/.tloop.lock" and new is not None and new[0] == "file" and (old is None or old[0] == "file"):
                continue
            if path == "ws/logs/tloop.log" and new is not None and new[0] == "file":
                if old is None or (old[0] == "file" and new[3].startswith(old[3])):
                    continue
                problems.append(f"{path}: the earlier log was rewritten, not appended to")
                continue
        what = "created" if old is None else "removed" if new is None else "changed"
        problems.append(f"{path}: {what}")
    return problems


def check(case, code, output, mode, before, after, expect_code, messages):
    problems = []
    if code != expect_code:
        problems.append(f"exit code {code}, expected {expect_code}")
    for m in messages:
        if m not in output:
            problems.append(f"no {m!r} in the output")
    for marker in CRASH_MARKERS:
        if marker in output:
            problems.append(f"a crash or stack trace in the output ({marker!r})")
    problems += workspace_problems(before, after, mode, case.sub(case.c.get("moves", {})))
    for pattern in case.sub(case.c.get("absent", [])):
        found = [p for p in case.dir.parent.rglob("*") if fnmatch.fnmatch(p.relative_to(case.dir.parent).as_posix(), pattern)]
        if found:
            problems.append(f"{pattern}: exists ({', '.join(str(f) for f in found)})")
    return problems


@pytest.mark.parametrize("raw", CASES)
def test_bad_input(raw, tmp_path):
    case = Case(raw, tmp_path)
    case.setup()
    lock = None
    if raw.get("lock"):
        (case.dir / "ws").mkdir(exist_ok=True)
        lock = open(case.dir / "ws" / ".tloop.lock", "a+")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
    report = []
    try:
        messages = case.sub(raw["message"])
        # validate: the case's code and message, or (run_only) 0; never a write.
        before = snapshot(case.dir)
        args = case.argv("validate")
        code, output = case.run(args, "validate")
        if raw.get("run_only"):
            problems = check(case, code, output, "strict", before, snapshot(case.dir), 0, [])
        else:
            problems = check(case, code, output, "strict", before, snapshot(case.dir), raw["exit"], messages)
        if problems:
            report.append(f"$ {' '.join(args)}\n{output}" + "".join(f"  - {p}\n" for p in problems))

        # run: the case's code and message; the workspace rules of its outcome.
        before = snapshot(case.dir)
        args = case.argv("run")
        code, output = case.run_with_signal(args) if "signal" in raw else case.run(args, "run")
        mode = "trained" if raw["exit"] != 2 else "refused" if raw.get("run_only") else "strict"
        problems = check(case, code, output, mode, before, snapshot(case.dir), raw["exit"], messages)
        if problems:
            report.append(f"$ {' '.join(args)}\n{output}" + "".join(f"  - {p}\n" for p in problems))
    finally:
        if lock:
            lock.close()
    assert not report, "\n".join(report)
