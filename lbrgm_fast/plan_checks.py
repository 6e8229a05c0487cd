"""What a plan from a stranger may hold: the container's bounds and the graphs' contents.

A plan is data that anybody can share, so `read_plan` treats it as hostile until these checks
pass (docs/plan-format.md, "Trust"). Each check returns the first problem it finds as a phrase
(None when there is none); `lbrgm_fast.plan` turns it into one `PlanError` line naming the file.

Bounds, with margin over a real 1024-px plan (generator 120 MiB, VGG16 56 MiB, AlexNet 9 MiB,
their ONNX graphs again with the weights embedded: ~0.4 GiB; TensorRT engines add up to ~0.3 GiB
per GPU key):

* at most 256 members (a plan has 8, plus 4 per TensorRT key) and 256 KiB of zip directory;
* at most 2 GiB per member (protobuf's limit on an ONNX graph; the largest real member is the
  120 MiB generator or its graph) and 8 GiB in all (twenty times a plan with engines);
* members stored uncompressed (as `write_plan` writes them): a compressed member is refused
  before a byte of it is inflated, so the compression ratio is exactly 1 and no zip bomb
  inflates; the members' sizes may not add up to more than the file itself holds (members that
  overlap one another are a bomb made of stored entries).
"""

from __future__ import annotations

import collections
import os
import re
import struct
import zipfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = [
    "MAX_DIRECTORY_BYTES",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
    "directory_problem",
    "entries_problem",
    "graph_problem",
    "member_name_problem",
]

MAX_MEMBERS = 256
# A directory entry is 46 bytes plus its name and extra fields: 1 KiB each is ample.
MAX_DIRECTORY_BYTES = MAX_MEMBERS * 1024
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 8 << 30

_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
# The standard ONNX operator domain, under both of its names; the exporter emits nothing else.
_STANDARD_DOMAINS = ("", "ai.onnx")

# Zip end records (PKWARE APPNOTE 4.3.14-4.3.16), as far as the directory's extent goes.
_END = struct.Struct("<4s4H2LH")  # signature, disks, entries here, entries, size, offset, comment
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record, disks
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here, entries, size, offset
_ZIP64_END_SIGNATURE = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF


def member_name_problem(name: str) -> str | None:
    """Why `name` cannot name a plan member: only relative paths of `A-Z a-z 0-9 _ . -` joined
    by `/`, without `.` or `..` parts, so that no name (and no folder made from one) can point
    outside where it is meant to be, on any system."""
    if not _MEMBER_NAME.match(name) or any(part in (".", "..") for part in name.split("/")):
        return f"{name!r} is not a safe member name (relative, A-Z a-z 0-9 _ . - and /, no '..')"
    return None


def directory_problem(handle: IO[bytes]) -> str | None:
    """Why the zip directory of the open file is too large for a plan, read from its end records
    alone, before `zipfile` parses (and holds in memory) every entry of the directory.

    Finds the end records where `zipfile` looks for them (the end record at the file's end or,
    after a comment, the last one in the final 64 KiB; a zip64 end record right before its
    locator), so both read the same directory. A file without an end record passes: `zipfile`
    then refuses it as no zip.
    """
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    start = max(0, size - _END.size - _MAX_COMMENT - _ZIP64_LOCATOR.size - _ZIP64_END.size)
    handle.seek(start)
    tail = handle.read()
    at = len(tail) - _END.size
    if not (at >= 0 and tail[at : at + 4] == _END_SIGNATURE and tail[-2:] == b"\0\0"):
        at = tail.rfind(_END_SIGNATURE)
    if at < 0 or len(tail) - at < _END.size:
        return None
    entries, directory_bytes = _END.unpack_from(tail, at)[4:6]
    locator = at - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR_SIGNATURE:
        record = locator - _ZIP64_END.size
        offset = _ZIP64_LOCATOR.unpack_from(tail, locator)[2]
        # A writer puts the zip64 record right before the locator, which points at it; where the
        # two disagree, this check and zipfile might read different records: refused.
        if record < 0 or start + record != offset or tail[record : record + 4] != _ZIP64_END_SIGNATURE:
            return "its zip64 end record is not where its locator points"
        entries, directory_bytes = _ZIP64_END.unpack_from(tail, record)[7:9]
    if entries > MAX_MEMBERS:
        return f"it is a zip archive of {entries} members; a plan has at most {MAX_MEMBERS}"
    if directory_bytes > MAX_DIRECTORY_BYTES:
        return f"its zip directory is {directory_bytes} bytes; a plan's is at most {MAX_DIRECTORY_BYTES}"
    return None


def entries_problem(entries: list[zipfile.ZipInfo], file_size: int) -> str | None:
    """Why the parsed zip directory is not a plan's, before any member is read: too many
    members, two of one name, unsafe names, compressed members, or sizes beyond the bounds or
    beyond the file itself."""
    if len(entries) > MAX_MEMBERS:
        return f"it is a zip archive of {len(entries)} members; a plan has at most {MAX_MEMBERS}"
    if max(collections.Counter(e.filename for e in entries).values(), default=0) > 1:
        return "the archive holds two members of the same name"
    total = 0
    for entry in entries:
        problem = member_name_problem(entry.filename)
        if problem:
            return problem
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            return (f"member {entry.filename} is compressed ({entry.compress_size} bytes unpacking to "
                    f"{entry.file_size}); plan members are stored uncompressed, so it is not unpacked")
        if entry.file_size > MAX_MEMBER_BYTES:
            return f"member {entry.filename} is {entry.file_size} bytes; a plan member is at most {MAX_MEMBER_BYTES}"
        total += entry.file_size
    if total > MAX_TOTAL_BYTES:
        return f"its members add up to {total} bytes; a plan holds at most {MAX_TOTAL_BYTES}"
    if total > file_size:
        return f"its members add up to {total} bytes, more than the file's {file_size} (overlapping or forged members)"
    return None


def graph_problem(data: bytes) -> str | None:
    """Why an ONNX graph from a plan may not be loaded: it must be self-contained standard ONNX
    as the exporter writes it (export/onnx_export.py: one opset-17 import of the standard
    domain, no local functions, no training graphs, no subgraph attributes, every weight
    embedded). External data would make the runtime open a file the graph names; other domains,
    functions and subgraphs are code paths (custom operators, EP-context nodes that load engine
    files, nested graphs) a plan never needs."""
    import onnx  # only needed when a plan's graph is read
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError):
        return "it is not a valid ONNX model"
    domains = sorted({entry.domain for entry in model.opset_import} - set(_STANDARD_DOMAINS))
    if domains:
        return f"it imports the operator domain(s) {', '.join(map(repr, domains))}; a plan's graphs use only standard ONNX"
    if model.functions or model.training_info:
        return "it defines local functions or training graphs, which a plan's graphs never hold"
    for node in model.graph.node:
        label = f"node {node.name or '(unnamed)'} ({node.domain or 'ai.onnx'}::{node.op_type})"
        if node.domain not in _STANDARD_DOMAINS or not onnx.defs.has(node.op_type, ""):
            return f"{label} is not a standard ONNX operator"
        if any(a.HasField("g") or a.graphs for a in node.attribute):
            return f"{label} holds a subgraph, which a plan's graphs never do"
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            return f"tensor {tensor.name!r} refers to external data ({location!r}); a plan's graphs embed all their weights"
    return None


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph without subgraphs holds: its initializers, the parts of its sparse
    initializers and the tensors in its nodes' attributes (a Constant's value)."""
    sparse = [*graph.sparse_initializer]
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                sparse.append(attribute.sparse_tensor)
            sparse += attribute.sparse_tensors
    for tensor in sparse:
        yield tensor.values
        yield tensor.indices
