"""Hostile checkpoint files: a checksum proves only that a file did not change
since it was written, so a checkpoint made to hurt passes the manifest. Each
case below is a checkpoint whose manifest is valid, with one file made to
crash, exhaust memory or run code. Resuming from it must exit 2 naming the
file and what is wrong, before any large allocation (the message names the
check that refused it), and leave the checkpoint where it is.

Run as a script, `python test_hostile_files.py DIR` writes the model.pt cases
as seeds for the checkpoint fuzz target (tests/fuzz/corpus/fuzz_checkpoint)."""
import io
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile
import zlib

import pytest

# A torch.save of {"w": torch.arange(4.0)}, written out opcode by opcode so
# that each case changes one of them.
STORAGE = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06"
NUMEL_4 = b"K\x04"
AFTER_NUMEL = b"tq\x07QK\x00"  # TUPLE, BINPUT, BINPERSID, then the storage offset 0
SIZE_4 = b"K\x04\x85q\x08"
STRIDE_1 = b"K\x01\x85q\x09"
TAIL = b"\x89ccollections\nOrderedDict\nq\x0a)Rq\x0btq\x0cRq\x0ds."
LEGIT = STORAGE + NUMEL_4 + AFTER_NUMEL + SIZE_4 + STRIDE_1 + TAIL
DATA = b"".join(int(i).to_bytes(4, "little") for i in (0, 0x3F800000, 0x40000000, 0x40400000))  # 0., 1., 2., 3.


def archive(pickle: bytes, data: bytes = DATA, compress_data: bool = False, claim_data_size: int = 0) -> bytes:
    """A torch.save zip; claim_data_size: the size the directory gives data/0 instead of its own."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/byteorder", "little")
        z.writestr(zipfile.ZipInfo("archive/data/0"), data,
                   compress_type=zipfile.ZIP_DEFLATED if compress_data else zipfile.ZIP_STORED)
        z.writestr("archive/version", "3\n")
    raw = out.getvalue()
    if claim_data_size:  # both sizes in data/0's central-directory entry
        at = raw.rindex(b"PK\x01\x02", 0, raw.rindex(b"archive/data/0"))
        raw = raw[:at + 20] + claim_data_size.to_bytes(4, "little") * 2 + raw[at + 28:]
    return raw


def long1(n: int) -> bytes:
    raw = n.to_bytes(8, "little", signed=True)  # LibTorch reads LONG1 of 8 bytes only
    return b"\x8a" + bytes([len(raw)]) + raw


DEPTH = 200_000
# name -> (model.pt bytes, what the message must say)
MODEL_CASES = {
    "storage larger than its record": (
        archive(STORAGE + long1(1 << 40) + AFTER_NUMEL + SIZE_4 + STRIDE_1 + TAIL),
        "claims a storage of 4398046511104 bytes, but its record holds 16"),
    "view beyond its storage": (
        archive(STORAGE + NUMEL_4 + AFTER_NUMEL + b"J\x00\x00\x10\x00\x85q\x08" + STRIDE_1 + TAIL),
        "reaches element 1048576, beyond its storage of 4"),
    "negative size": (  # LibTorch's own check refuses it as the tensor is rebuilt
        archive(STORAGE + NUMEL_4 + AFTER_NUMEL + b"J\xff\xff\xff\xff\x85q\x08" + STRIDE_1 + TAIL),
        "numel: integer multiplication overflow"),
    "offset beyond its storage": (  # the BININT1 0 after BINPERSID is the storage offset
        archive(STORAGE + NUMEL_4 + b"tq\x07QJ\x00\x00\x00\x40" + SIZE_4 + STRIDE_1 + TAIL),
        "reaches element 1073741828, beyond its storage of 4"),
    "a string of a terabyte": (
        archive(b"\x80\x02\x8d" + (1 << 40).to_bytes(8, "little") + b"abc."),
        "an argument of 1099511627776 bytes, but only 4 are left"),
    "a memo index of 2^32-1": (
        archive(b"\x80\x02}r\xff\xff\xff\xff."), "memo index 4294967295 out of order"),
    "lists nested 200,000 deep": (
        archive(b"\x80\x02" + b"]" * DEPTH + b"a" * (DEPTH - 1) + b"."), "containers nested more than 32 deep"),
    "a list that holds itself": (
        archive(b"\x80\x02]q\x00h\x00a."), "containers nested more than 32 deep (or in a cycle)"),
    "a zip bomb": (
        archive(STORAGE + long1(1 << 24) + AFTER_NUMEL + b"J\x00\x00\x00\x01\x85q\x08" + STRIDE_1 + TAIL,
                data=bytes(1 << 26), compress_data=True),
        "a compressed record (torch.save stores them whole)"),
    "a record that claims a gigabyte": (
        archive(LEGIT, data=DATA, claim_data_size=1 << 30),
        "a record that claims 1073741824 bytes, more than the file holds"),
    "code to run": (
        archive(b"\x80\x02cos\nsystem\n(X\x04\x00\x00\x00trueq\x00tR."), "os"),
}


def test_the_legit_archive_is_what_torch_save_writes():
    torch = pytest.importorskip("torch")
    assert torch.equal(torch.load(io.BytesIO(archive(LEGIT)), weights_only=True)["w"], torch.arange(4.0))


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A workspace with one checkpoint at step 2 (regression_mlp)."""
    from conftest import CLI
    root = tmp_path_factory.mktemp("hostile")
    (root / "spec.toml").write_text(
        f'[run]\nworkspace = "{root / "ws"}"\n[trainer]\nmax_steps = 2\n'
        '[task]\nplugin = "regression_mlp"\nhidden_dim = 4\n'
        '[[hooks]]\nplugin = "checkpointing"\ninterval = 2\n')
    result = subprocess.run([CLI, "run", str(root / "spec.toml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def resume_with(checkpointed, tmp_path, file, content, manifest_edit=None):
    """Copies the workspace, puts `content` in checkpoint 2's `file` with a
    manifest that vouches for it, resumes, and returns (result, checkpoint dir)."""
    from conftest import CLI
    ws = tmp_path / "ws"
    shutil.copytree(checkpointed / "ws", ws)
    ckpt = ws / "checkpoints" / "2"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    if content is not None:
        (ckpt / file).write_bytes(content)
        manifest["files"][file] = {"size": len(content), "crc32": zlib.crc32(content)}
    if manifest_edit:
        manifest_edit(manifest)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    spec = tmp_path / "spec.toml"
    spec.write_text((checkpointed / "spec.toml").read_text().replace(str(checkpointed / "ws"), str(ws)))
    result = subprocess.run([CLI, "run", str(spec), "--set", "trainer.max_steps=4"], capture_output=True, text=True)
    return result, ckpt


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("file", ["model.pt", "state.pt"])
def test_a_hostile_tensor_file_is_refused_before_it_is_trusted(checkpointed, tmp_path, case, file):
    content, expected = MODEL_CASES[case]
    result, ckpt = resume_with(checkpointed, tmp_path, file, content)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert f"{ckpt / file}: cannot be read" in out and expected in out, out
    assert "Exception raised from" not in out, out  # no C++ backtrace
    assert (ckpt / file).read_bytes() == content  # the checkpoint stays; nothing was overwritten
    assert not (ckpt.parent / "4").exists()


@pytest.mark.parametrize("name,expected", [
    ("/dev/zero", "which is not a file name in the checkpoint"),
    ("../../spec.toml", "which is not a file name in the checkpoint"),
    ("..", "which is not a file name in the checkpoint"),
])
def test_a_manifest_cannot_point_outside_its_checkpoint(checkpointed, tmp_path, name, expected):
    def edit(manifest):
        manifest["files"][name] = {"size": 1, "crc32": 0}
    result, ckpt = resume_with(checkpointed, tmp_path, None, None, edit)
    out = result.stdout + result.stderr
    # The checkpoint is damaged: moved aside and named, and with no other the run stops.
    assert result.returncode == 2, out
    assert expected in out and name in out, out
    assert (ckpt.parent / "damaged-2" / "manifest.json").exists()


def test_a_manifest_with_sizes_out_of_range_is_refused(checkpointed, tmp_path):
    def edit(manifest):
        manifest["files"]["model.pt"]["size"] = -1
    result, ckpt = resume_with(checkpointed, tmp_path, None, None, edit)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "the size of 'model.pt' is not a number from 0 to" in out, out


def test_a_state_json_of_the_wrong_shape_is_refused(checkpointed, tmp_path):
    content = json.dumps({"step": {"int": "ten"}}).encode()
    result, ckpt = resume_with(checkpointed, tmp_path, "state.json", content)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert f"{ckpt / 'state.json'}: cannot be read: 'step' is not" in out, out


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, (content, _)) in enumerate(sorted(MODEL_CASES.items())):
        (out / f"hostile-{i}").write_bytes(b"\x00" + content)
    (out / "legit").write_bytes(b"\x00" + archive(LEGIT))
