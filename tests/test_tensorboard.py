"""ferrotune.tensorboard writes event files that TensorBoard itself reads back."""

import glob
import os
import struct

import numpy as np
import pytest

from ferrotune.tensorboard import SummaryWriter, crc32c, masked_crc32c


def _records(path):
    """Split a TFRecord file, checking both CRCs of every record."""
    data = open(path, "rb").read()
    out, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert hcrc == masked_crc32c(header)
        body = data[pos + 12 : pos + 12 + length]
        (bcrc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert bcrc == masked_crc32c(body)
        out.append(body)
        pos += 16 + length
    assert pos == len(data)
    return out


def test_crc32c_known_values():
    # RFC 3720 (iSCSI) check value and test vectors
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_file_name_and_framing(tmp_path):
    with SummaryWriter(tmp_path, filename_suffix=".run1") as w:
        w.add_scalar("loss", 1.5, 3)
        path = w.file_path
    name = os.path.basename(path)
    assert name.startswith("events.out.tfevents.")
    assert name.endswith(".run1")
    assert str(os.getpid()) in name
    assert len(_records(path)) == 2  # file_version + one scalar


def test_events_parse_with_protobuf(tmp_path):
    event_pb2 = pytest.importorskip(
        "tensorboard.compat.proto.event_pb2", reason="the tensorboard package is not installed"
    )
    with SummaryWriter(tmp_path) as w:
        w.add_scalar("train/loss", np.float32(0.25), global_step=7, walltime=123.5)
        w.add_text("note", "héllo **world**", global_step=2)
        path = w.file_path
    first, scalar, text = (event_pb2.Event.FromString(r) for r in _records(path))
    assert first.file_version == "brain.Event:2"
    assert scalar.step == 7 and scalar.wall_time == 123.5
    (v,) = scalar.summary.value
    assert v.tag == "train/loss" and v.simple_value == 0.25
    (t,) = text.summary.value
    assert t.metadata.plugin_data.plugin_name == "text"
    assert t.tensor.dtype == 7  # DT_STRING
    assert [d.size for d in t.tensor.tensor_shape.dim] == [1]
    assert t.tensor.string_val[0].decode("utf-8") == "héllo **world**"


def _accumulator(log_dir):
    mod = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package is not installed",
    )
    acc = mod.EventAccumulator(str(log_dir), size_guidance={mod.SCALARS: 0, mod.TENSORS: 0})
    acc.Reload()
    return acc


def test_event_accumulator_reads_scalars_and_text(tmp_path):
    losses = [2.5, 2.0, 1.75, 1.5, 1.25]
    with SummaryWriter(tmp_path) as w:
        for step, loss in enumerate(losses, start=1):
            w.add_scalar("train/loss", loss, step)
            w.add_scalar("train/learning_rate", 1e-3 * step, step)
        w.add_scalar("eval/loss", 1.8, 5)
        w.add_scalar("big_step", -1.0, 2**40)
        w.add_text("args", "| a | b |\n| --- | --- |\n| lr | 0.001 |", 0)
    acc = _accumulator(tmp_path)
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train/loss", "train/learning_rate", "eval/loss", "big_step"}
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert [e.value for e in events] == losses  # exactly representable in float32
    lr = [e.value for e in acc.Scalars("train/learning_rate")]
    np.testing.assert_allclose(lr, [1e-3 * s for s in range(1, 6)], rtol=1e-6)
    assert acc.Scalars("big_step")[0].step == 2**40
    assert "args" in tags["tensors"]
    (text_event,) = acc.Tensors("args")
    assert text_event.tensor_proto.string_val[0].decode() == "| a | b |\n| --- | --- |\n| lr | 0.001 |"


def test_add_scalars_writes_one_run_per_key(tmp_path):
    with SummaryWriter(tmp_path) as w:
        for step in range(3):
            w.add_scalars("loss", {"train": 1.0 / (step + 1), "eval": 2.0 / (step + 1)}, step)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["loss_eval", "loss_train"]
    acc = _accumulator(tmp_path / "loss_eval")
    assert [e.value for e in acc.Scalars("loss")] == [2.0, 1.0, pytest.approx(2.0 / 3)]


def test_flush_makes_events_visible_before_close(tmp_path):
    w = SummaryWriter(tmp_path, flush_secs=3600)
    w.add_scalar("x", 1.0, 1)
    w.flush()
    assert len(_records(w.file_path)) == 2
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.add_scalar("x", 2.0, 2)


def test_rejects_non_scalars(tmp_path):
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(TypeError):
            w.add_scalar("x", "abc")
        with pytest.raises(TypeError):
            w.add_scalar("x", np.zeros(3))
        with pytest.raises(TypeError):
            w.add_text("t", 3)
        w.add_scalar("nan_ok", float("nan"), 1)  # non-finite values are valid floats
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 1
