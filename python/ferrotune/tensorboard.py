"""A dependency-free TensorBoard event-file writer.

``SummaryWriter`` writes the files that TensorBoard reads (``events.out.tfevents.*``)
without TensorFlow, PyTorch, protobuf or the ``tensorboard`` package: the few protobuf
messages involved (``Event``, ``Summary``, ``SummaryMetadata``, ``TensorProto``) are
encoded by hand, and each record is framed as TFRecord::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    bytes  data (one serialized Event)
    uint32 masked_crc32c(data)

The API follows ``torch.utils.tensorboard.SummaryWriter`` for the calls a training loop
needs: ``add_scalar``, ``add_scalars``, ``add_text``, ``flush``, ``close``, and use as a
context manager. View the logs with ``tensorboard --logdir <log_dir>``.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any, BinaryIO, Dict, Mapping, Optional, Union

__all__ = ["SummaryWriter", "crc32c", "masked_crc32c"]

# --------------------------------------------------------------------------- CRC32C


def _make_crc32c_table() -> "list[int]":
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by TFRecord; pure Python."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- protobuf

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int64 negative values: two's complement, 10 bytes
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _field_varint(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value)


def _field_bytes(field: int, value: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(value)) + value


def _field_double(field: int, value: float) -> bytes:
    return _key(field, _FIXED64) + struct.pack("<d", value)


def _field_float(field: int, value: float) -> bytes:
    return _key(field, _FIXED32) + struct.pack("<f", value)


# Field numbers (tensorflow/core/util/event.proto, framework/summary.proto, tensor.proto)
# Event:            wall_time=1 (double), step=2 (int64), file_version=3, summary=5
# Summary:          value=1
# Summary.Value:    tag=1, simple_value=2 (float), metadata=9, tensor=8
# SummaryMetadata:  plugin_data=1; PluginData: plugin_name=1, content=2
# TensorProto:      dtype=1, tensor_shape=2, string_val=8; DT_STRING = 7
# TensorShapeProto: dim=2; Dim: size=1
_DT_STRING = 7


def _event(wall_time: float, step: Optional[int] = None, *, file_version: Optional[str] = None,
           summary: Optional[bytes] = None) -> bytes:
    out = _field_double(1, wall_time)
    if step:
        out += _field_varint(2, int(step))
    if file_version is not None:
        out += _field_bytes(3, file_version.encode("utf-8"))
    if summary is not None:
        out += _field_bytes(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    return _field_bytes(1, tag.encode("utf-8")) + _field_float(2, value)


def _text_value(tag: str, text: str) -> bytes:
    # What TensorBoard's text plugin (and torch's SummaryWriter.add_text) writes:
    # plugin "text" (TextPluginData version 0: empty message), a DT_STRING tensor of shape [1].
    plugin_data = _field_bytes(1, b"text") + _field_bytes(2, b"")
    metadata = _field_bytes(1, plugin_data)
    shape = _field_bytes(2, _field_varint(1, 1))
    tensor = _field_varint(1, _DT_STRING) + _field_bytes(2, shape) + _field_bytes(8, text.encode("utf-8"))
    return _field_bytes(1, tag.encode("utf-8")) + _field_bytes(9, metadata) + _field_bytes(8, tensor)


def _summary(*values: bytes) -> bytes:
    return b"".join(_field_bytes(1, v) for v in values)


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# --------------------------------------------------------------------------- writer

_uid_lock = threading.Lock()
_uid = 0


def _next_uid() -> int:
    global _uid
    with _uid_lock:
        _uid += 1
        return _uid


def _to_float(value: Any, what: str) -> float:
    if hasattr(value, "item") and callable(value.item):  # numpy scalar / 0-d array / torch tensor
        try:
            value = value.item()
        except (ValueError, TypeError) as e:
            raise TypeError(f"{what} must be a scalar, got an array-like {type(value).__name__}") from e
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a real number, got {value!r}") from e


def _to_step(step: Any) -> Optional[int]:
    if step is None:
        return None
    if hasattr(step, "item") and callable(step.item):
        step = step.item()
    return int(step)


class _EventFile:
    """One events file: opened at once, with a file_version record first."""

    def __init__(self, log_dir: str, filename_suffix: str, flush_secs: float) -> None:
        os.makedirs(log_dir, exist_ok=True)
        name = "events.out.tfevents.%010d.%s.%s.%s%s" % (
            time.time(),
            socket.gethostname(),
            os.getpid(),
            _next_uid(),
            filename_suffix,
        )
        self.path = os.path.join(log_dir, name)
        self._file: Optional[BinaryIO] = open(self.path, "wb")
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self.write(_event(time.time(), file_version="brain.Event:2"))
        self.flush()

    def write(self, event: bytes) -> None:
        with self._lock:
            if self._file is None:
                raise ValueError(f"the event file {self.path} is closed")
            self._file.write(_record(event))
            if time.monotonic() - self._last_flush >= self._flush_secs:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._last_flush = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                self._file.close()
                self._file = None


class SummaryWriter:
    """Write scalars and text for TensorBoard, like ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: directory for the event files (created if needed). ``None`` picks
            ``runs/<date>_<host><comment>`` as PyTorch does.
        comment: appended to the default ``log_dir`` name.
        flush_secs: events are flushed to disk at least this often (and on
            :meth:`flush` / :meth:`close`).
        filename_suffix: appended to every event file name.

    Example::

        with SummaryWriter("runs/demo") as w:
            for step, loss in enumerate(losses):
                w.add_scalar("train/loss", loss, step)
    """

    def __init__(
        self,
        log_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        comment: str = "",
        flush_secs: float = 120,
        filename_suffix: str = "",
    ) -> None:
        if log_dir is None:
            stamp = time.strftime("%b%d_%H-%M-%S")
            log_dir = os.path.join("runs", f"{stamp}_{socket.gethostname()}{comment}")
        self.log_dir = os.fspath(log_dir)
        self._flush_secs = flush_secs
        self._filename_suffix = filename_suffix
        self._file: Optional[_EventFile] = _EventFile(self.log_dir, filename_suffix, flush_secs)
        self._sub_writers: Dict[str, _EventFile] = {}

    # -- properties

    @property
    def file_path(self) -> str:
        """Path of the main event file."""
        return self._writer().path

    def get_logdir(self) -> str:
        return self.log_dir

    def _writer(self) -> _EventFile:
        if self._file is None:
            raise ValueError("this SummaryWriter is closed")
        return self._file

    # -- logging

    def add_scalar(
        self,
        tag: str,
        scalar_value: Any,
        global_step: Optional[int] = None,
        walltime: Optional[float] = None,
    ) -> None:
        """Log one number (stored as a 32-bit float) under ``tag`` at ``global_step``."""
        value = _to_float(scalar_value, f"the value of {tag!r}")
        wall = time.time() if walltime is None else float(walltime)
        self._writer().write(_event(wall, _to_step(global_step), summary=_summary(_scalar_value(tag, value))))

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: Mapping[str, Any],
        global_step: Optional[int] = None,
        walltime: Optional[float] = None,
    ) -> None:
        """Log several numbers to draw on one chart.

        As in PyTorch, each entry goes to its own run, a sub-directory
        ``<log_dir>/<main_tag>_<key>`` (``/`` replaced by ``_``), under the tag ``main_tag``.
        """
        self._writer()  # raise if closed
        wall = time.time() if walltime is None else float(walltime)
        step = _to_step(global_step)
        for key, raw in tag_scalar_dict.items():
            value = _to_float(raw, f"the value of {main_tag!r}/{key!r}")
            run = (main_tag + "_" + key).replace("/", "_")
            sub = self._sub_writers.get(run)
            if sub is None:
                sub = _EventFile(os.path.join(self.log_dir, run), self._filename_suffix, self._flush_secs)
                self._sub_writers[run] = sub
            sub.write(_event(wall, step, summary=_summary(_scalar_value(main_tag, value))))

    def add_text(
        self,
        tag: str,
        text_string: str,
        global_step: Optional[int] = None,
        walltime: Optional[float] = None,
    ) -> None:
        """Log a text (Markdown is rendered by TensorBoard's Text tab)."""
        if not isinstance(text_string, str):
            raise TypeError(f"text_string must be a str, got {type(text_string).__name__}")
        wall = time.time() if walltime is None else float(walltime)
        self._writer().write(_event(wall, _to_step(global_step), summary=_summary(_text_value(tag, text_string))))

    def add_hparams_text(self, hparams: Mapping[str, Any], tag: str = "hparams") -> None:
        """Log a mapping (e.g. training arguments) as a Markdown table under ``tag``."""
        rows = ["| name | value |", "| --- | --- |"]
        for k, v in hparams.items():
            cell = str(v).replace("|", "\\|")
            rows.append(f"| {k} | {cell} |")
        self.add_text(tag, "\n".join(rows))

    # -- lifetime

    def flush(self) -> None:
        """Write buffered events to disk."""
        if self._file is not None:
            self._file.flush()
        for sub in self._sub_writers.values():
            sub.flush()

    def close(self) -> None:
        """Flush and close the event files; further ``add_*`` calls raise ``ValueError``."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for sub in self._sub_writers.values():
            sub.close()

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: do not lose buffered events
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._file is None else "open"
        return f"SummaryWriter(log_dir={self.log_dir!r}, {state})"

