"""Build of the swe-env Python client: the gRPC stubs are generated from the service's proto at build time.

`build_py` runs grpc_tools.protoc on `proto/swe_env/v1/env.proto` (the repository's `../../proto`, or the copy an
sdist carries) and writes `swe_env/v1/env_pb2.py`, its `.pyi` type stubs and `env_pb2_grpc.py` into the build, plus
`swe_env/_build_info.py` with the proto's SHA-256. Nothing generated is kept in the source tree.

Version: `CLIENT_RELEASE+proto.<first 12 hex digits of the proto's SHA-256>`, so a client built from a changed proto
has a different version, and `swe_env.PROTO_SHA256` names the exact proto the stubs came from. The runtime needs
grpcio and protobuf at least as new as the grpcio-tools that generated the stubs (generated code checks this).
"""

import hashlib
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

CLIENT_RELEASE = "0.1.0"
PROTO_FILE = os.path.join("swe_env", "v1", "env.proto")
HERE = os.path.dirname(os.path.abspath(__file__))


def proto_root():
    """The directory holding `swe_env/v1/env.proto`: the sdist's copy first, then the repository's."""
    for root in (os.path.join(HERE, "proto"), os.path.join(HERE, "..", "..", "proto")):
        if os.path.isfile(os.path.join(root, PROTO_FILE)):
            return os.path.normpath(root)
    sys.exit(
        "swe-env client build: proto/swe_env/v1/env.proto not found; build from the swe-env repository "
        "(pip install ./clients/python) or from an sdist made there"
    )


def proto_sha256():
    with open(os.path.join(proto_root(), PROTO_FILE), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def runtime_requirements():
    """grpcio and protobuf no older than the generator (the generated modules refuse older runtimes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tools, protobuf = version("grpcio-tools"), version("protobuf")
    except PackageNotFoundError:  # metadata queries without the build requirements installed
        return ["grpcio>=1.60", "protobuf>=4.25"]

    def major_minor(v):
        return ".".join(v.split(".")[:2])

    return ["grpcio>=" + major_minor(tools), "protobuf>=" + major_minor(protobuf)]


class BuildPyWithStubs(build_py):
    """build_py, then the stubs and the build info generated into the build directory."""

    def run(self):
        super().run()
        from grpc_tools import protoc

        root = proto_root()
        out = self.build_lib
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        args = [
            "grpc_tools.protoc",
            "-I" + root,
            "-I" + include,
            "--python_out=" + out,
            "--pyi_out=" + out,
            "--grpc_python_out=" + out,
            os.path.join(root, PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            sys.exit("swe-env client build: grpc_tools.protoc failed on " + os.path.join(root, PROTO_FILE))
        info = os.path.join(out, "swe_env", "_build_info.py")
        with open(info, "w") as f:
            f.write('"""Generated at build time by setup.py."""\n\n')
            f.write("VERSION = %r\n" % version_string())
            f.write("PROTO_SHA256 = %r\n" % proto_sha256())


class SdistWithProto(sdist):
    """An sdist that carries the proto (so it builds outside the repository)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        target = os.path.join(base_dir, "proto", PROTO_FILE)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(proto_root(), PROTO_FILE), target)


def version_string():
    return CLIENT_RELEASE + "+proto." + proto_sha256()[:12]


setup(
    version=version_string(),
    install_requires=runtime_requirements(),
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto},
)
