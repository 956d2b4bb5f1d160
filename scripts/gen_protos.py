"""Regenerate the protobuf and gRPC stubs from proto/ into the client package.

Generated code is never edited by hand; `--check` regenerates into a temporary
directory and fails on any difference, so drift is caught in the test suite.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "clients" / "python"
PACKAGE = Path("capreg") / "v1"
BIN_DIR = Path(sys.executable).parent  # mypy-protobuf installs its plugins beside python


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto file; returns the generated files, relative to out_root."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE).glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={BIN_DIR / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN_DIR / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in (out_root / "capreg", out_root / PACKAGE):
        (package_dir / "__init__.py").write_text('"""Generated protobuf code; do not edit."""\n')
    return sorted(p.relative_to(out_root) for p in (out_root / "capreg").rglob("*") if p.is_file())


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted(
            p.relative_to(OUT_DIR)
            for p in (OUT_DIR / "capreg").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        )
        if fresh != committed:
            print(f"generated file set differs: {sorted(set(fresh) ^ set(committed))}")
            return 1
        stale = [p for p in fresh if not filecmp.cmp(Path(tmp) / p, OUT_DIR / p, shallow=False)]
        if stale:
            print(f"generated code is stale, run `make proto`: {[str(p) for p in stale]}")
            return 1
    print("generated code is up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ")
    if parser.parse_args().check:
        return check()
    shutil.rmtree(OUT_DIR / "capreg", ignore_errors=True)
    generate(OUT_DIR)
    print(f"generated stubs into {OUT_DIR / 'capreg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
