"""mokit.export.load_program on crafted .pt2 archives: nothing in the file is unpickled, eval()ed or
exec()ed, a member altered after export is refused, and every refusal is a clear ValueError.

Each crafted archive carries a payload that would create a marker file if it ran (on load or on a
call of the loaded module); the marker must never appear. Most archives also get a manifest that the
attacker recomputed, so each check below the manifest is exercised on its own."""

import hashlib
import io
import json
import os
import pickle
import re
import shlex
import zipfile

import pytest
import torch

from mokit import export as E
from mokit.models import create_model
from mokit.train import seed_everything

MANIFEST, FORMAT = "archive/extra/mokit_manifest.json", "mokit.export_program/1"


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """(model, path) of lenet300 exported by export_program."""
    seed_everything(0)
    model = create_model("lenet300").eval()
    return model, E.export_program(model, tmp_path_factory.mktemp("pt2") / "m.pt2", (1, 28, 28))


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write(path, members: dict[str, bytes], *, manifest: bool = True, compress=zipfile.ZIP_STORED):
    """Write `members` as a zip; manifest=True: with a manifest recomputed over them, as an attacker would;
    False: with the manifest (if any) as export_program wrote it."""
    if manifest:
        members = {n: b for n, b in members.items() if n != MANIFEST}
        sums = {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}
        members[MANIFEST] = json.dumps({"format": FORMAT, "sha256": sums}).encode()
    with zipfile.ZipFile(path, "w", compress) as z:
        for n, b in members.items():
            z.writestr(n, b)
    return path


class Shell:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _torch_save(obj, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol)
    return buf.getvalue()


def _edit_json(members, name, edit):
    value = json.loads(members[name])
    edit(value)
    members[name] = json.dumps(value).encode()


def _node0(program_json):
    return program_json["graph_module"]["graph"]["nodes"][0]


# Each case: (how the archive is changed given the marker path, text the error must contain).
def _sample_inputs_pickle(m, mark):
    m["archive/data/sample_inputs/model.pt"] = _torch_save(Shell(f"touch {shlex.quote(mark)}"))


def _sample_inputs_protocol4(m, mark):
    m["archive/data/sample_inputs/model.pt"] = _torch_save(Shell(f"touch {shlex.quote(mark)}"), protocol=4)


def _sample_inputs_bare_pickle(m, mark):          # torch's legacy (non-zip) format
    m["archive/data/sample_inputs/model.pt"] = pickle.dumps(Shell(f"touch {shlex.quote(mark)}"), protocol=2)


def _sample_inputs_extra_member(m, mark):         # a clean data.pkl, plus a pickle torch does not expect
    inner = zipfile.ZipFile(io.BytesIO(m["archive/data/sample_inputs/model.pt"]))
    parts = {i.filename: inner.read(i) for i in inner.infolist()}
    root = next(iter(parts)).split("/")[0]
    parts[f"{root}/evil.pkl"] = pickle.dumps(Shell(f"touch {shlex.quote(mark)}"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in parts.items():
            z.writestr(n, b)
    m["archive/data/sample_inputs/model.pt"] = buf.getvalue()


def _pickled_weight(m, mark):
    def edit(cfg):
        cfg["config"]["1.bias"]["use_pickle"] = True
    _edit_json(m, "archive/data/weights/model_weights_config.json", edit)
    m["archive/data/weights/weight_1"] = _torch_save(Shell(f"touch {shlex.quote(mark)}"))


def _opaque_constant(m, mark):
    m["archive/data/constants/model_constants_config.json"] = json.dumps({"config": {"c": {
        "path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}).encode()
    m["archive/data/constants/opaque_obj_0"] = pickle.dumps(Shell(f"touch {shlex.quote(mark)}"))


def _constant_config_pickled_tensor(m, mark):     # a member name that is allowed, pickled content
    m["archive/data/constants/model_constants_config.json"] = json.dumps({"config": {"c": {
        "path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}).encode()
    m["archive/data/constants/tensor_0"] = _torch_save(Shell(f"touch {shlex.quote(mark)}"))


def _guards_code(m, mark):
    def edit(p):
        p["guards_code"] = [f"__import__('os').system('touch {mark}') == 0"]
    _edit_json(m, "archive/models/model.json", edit)


def _shape_expression(m, mark):                   # sympy.sympify eval()s the text
    def edit(p):
        size = p["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]
        size["as_expr"]["expr_str"] = f"__import__('os').system('touch {mark}')"
    _edit_json(m, "archive/models/model.json", edit)


def _range_constraint(m, mark):
    def edit(p):
        p["range_constraints"][f"__import__('os').system('touch {mark}')"] = {"min_val": 1, "max_val": 2}
    _edit_json(m, "archive/models/model.json", edit)


def _os_system_target(m, mark):
    def edit(p):
        _node0(p)["target"] = "torch.serialization.os.system"
        _node0(p)["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {mark}"}, "kind": 1}]
    _edit_json(m, "archive/models/model.json", edit)


def _extra_pickle_member(m, mark):
    m["archive/extra/evil.pkl"] = pickle.dumps(Shell(f"touch {shlex.quote(mark)}"))


def _legacy_format(m, mark):                      # torch's fallback reader for 2.7-era files
    m.clear()
    m["version"] = b"8.20"
    m["serialized_exported_program.json"] = b"{}"
    m["serialized_example_inputs.pt"] = pickle.dumps(Shell(f"touch {shlex.quote(mark)}"))


def _huge_weight(m, mark):                        # an empty member declared as 10^12 floats
    def edit(cfg):
        cfg["config"]["1.bias"]["tensor_meta"]["sizes"] = [{"as_int": 10**12}]
    _edit_json(m, "archive/data/weights/model_weights_config.json", edit)
    m["archive/data/weights/weight_1"] = b""


def _deep_json(m, mark):
    m["archive/models/model.json"] = b"[" * 100_000 + b"]" * 100_000


CRAFTED = {
    "sample inputs pickle": (_sample_inputs_pickle, "posix.system"),
    "sample inputs protocol 4": (_sample_inputs_protocol4, "opcode"),
    "sample inputs bare pickle": (_sample_inputs_bare_pickle, "data/sample_inputs/model.pt is not a readable zip"),
    "sample inputs extra member": (_sample_inputs_extra_member, "evil.pkl"),
    "pickled weight": (_pickled_weight, "is pickled"),
    "opaque constant": (_opaque_constant, "opaque_obj_0"),
    "pickled tensor constant": (_constant_config_pickled_tensor, "is pickled"),
    "guards code": (_guards_code, "guards_code"),
    "shape expression": (_shape_expression, "shape expression"),
    "range constraint": (_range_constraint, "range constraint"),
    "os.system target": (_os_system_target, "torch.serialization.os.system"),
    "extra pickle member": (_extra_pickle_member, "extra/evil.pkl"),
    "legacy format": (_legacy_format, "not under a root folder"),
    "huge weight": (_huge_weight, "cannot hold"),
    "deeply nested model.json": (_deep_json, "not valid JSON"),
}


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest recomputed", "manifest stale"])
@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_archive_never_runs_code(program, tmp_path, case, manifest):
    change, message = CRAFTED[case]
    mark = str(tmp_path / "marker")
    members = _members(program[1])
    change(members, mark)
    path = _write(tmp_path / "crafted.pt2", members, manifest=manifest)
    with pytest.raises(ValueError, match="refused to load") as err:
        module = E.load_program(path)
        module(torch.zeros(2, 1, 28, 28))               # a payload that runs on a call counts too
    assert not os.path.exists(mark), f"{case}: the payload ran"
    if manifest:
        assert message in str(err.value), err.value
    else:        # refused by the manifest, or earlier by the list of members export_program writes
        assert re.search("manifest|SHA-256|does not write|not under a root folder", str(err.value)), err.value


def test_a_tampered_weight_is_detected(program, tmp_path):
    _model, path = program
    members = _members(path)
    w = bytearray(members["archive/data/weights/weight_0"])
    w[:4] = b"\x00\x00\x80\x7f"                          # one weight becomes +inf
    members["archive/data/weights/weight_0"] = bytes(w)
    with pytest.raises(ValueError, match="weights/weight_0 does not match its SHA-256 in the manifest"):
        E.load_program(_write(tmp_path / "tampered.pt2", members, manifest=False))


def test_unreadable_and_foreign_archives_are_refused_clearly(program, tmp_path):
    _, path = program
    buf = io.BytesIO()
    torch.export.save(torch.export.export(create_model("lenet300").eval(), (torch.zeros(2, 1, 28, 28),)), buf)
    (tmp_path / "plain.pt2").write_bytes(buf.getvalue())
    (tmp_path / "truncated.pt2").write_bytes(path.read_bytes()[:3000])
    (tmp_path / "text.pt2").write_text("not a zip")
    members = _members(path)
    cases = {
        "plain.pt2": "has no extra/mokit_manifest.json: it was not written by mokit.export.export_program",
        "truncated.pt2": "is not a readable zip archive",
        "text.pt2": "is not a readable zip archive",
        "deflated.pt2": "is compressed",
        "no_graph.pt2": "members missing: \\['models/model.json'\\]",
    }
    _write(tmp_path / "deflated.pt2", members, compress=zipfile.ZIP_DEFLATED)
    _write(tmp_path / "no_graph.pt2", {n: b for n, b in members.items() if not n.endswith("model.json")})
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            E.load_program(tmp_path / name)


def test_export_writes_a_manifest_and_loads_back(program, tmp_path):
    model, path = program
    members = _members(path)
    sums = json.loads(members[MANIFEST])
    assert sums["format"] == FORMAT
    assert set(sums["sha256"]) == set(members) - {MANIFEST}
    assert all(hashlib.sha256(members[n]).hexdigest() == h for n, h in sums["sha256"].items())
    loaded = E.load_program(path)
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"in_shape must be positive integers.*\(True, 28, 28\)"):
        E.export_program(model, tmp_path / "x.pt2", (True, 28, 28))
    assert not list(tmp_path.iterdir())
