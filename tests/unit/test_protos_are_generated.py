"""The committed generated code is exactly what generate.py makes from the committed protos."""

from pathlib import Path

import pytest

from reference.protos import generate

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
PROTOS = generate.proto_files()


def test_the_protos_folder_holds_at_least_the_control_plane_proto():
    assert Path("reference/protos/controlplane.proto") in PROTOS


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("regenerated")
    generate.generate(out)
    return out


@pytest.mark.parametrize("proto", PROTOS, ids=lambda proto: proto.name)
def test_committed_generated_code_matches_a_fresh_run_of_protoc(proto: Path, regenerated: Path):
    for suffix in GENERATED_SUFFIXES:
        name = proto.with_name(proto.stem + suffix)
        committed = generate.ROOT / name
        assert committed.exists(), f"{name} is missing: run python reference/protos/generate.py"
        assert committed.read_text() == (regenerated / name).read_text(), (
            f"{name} is out of date with {proto}: run python reference/protos/generate.py"
        )


def test_every_generated_file_has_its_proto():
    stems = {proto.stem for proto in PROTOS}
    for path in generate.PROTOS.glob("*_pb2*.py*"):
        stem = path.name.split("_pb2")[0]
        assert stem in stems, f"{path.name} has no {stem}.proto: delete it or restore the proto"
