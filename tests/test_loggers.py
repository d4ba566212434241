"""Run loggers write what they claim: the files are read back (csv; wandb offline run files parsed)."""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from geal.report.loggers.base import MultiLogger, NullLogger, flatten, scalars
from geal.report.loggers.csv import CSVLogger


def test_flatten_and_scalars() -> None:
    flat = flatten({"a": {"b": 1, "c": {"d": 2.5}}, "e": "x"})
    assert flat == {"a/b": 1, "a/c/d": 2.5, "e": "x"}
    assert scalars({"a": 1, "b": True, "c": "s", "d": float("inf"), "e": {"f": 2}}) == {"a": 1.0, "e/f": 2.0}


def test_csv_logger_round_trip(tmp_path: Path) -> None:
    with CSVLogger(str(tmp_path)) as logger:
        logger.log_config({"task": {"name": "small_cnn"}, "seed": 3})
        logger.log_metrics({"loss": 0.5, "acc": 0.25}, step=1, prefix="budget_10/train")
        logger.log_metrics({"loss": 0.25, "note": "text is dropped"}, step=2, prefix="budget_10/train")  # type: ignore[dict-item]
        logger.log_metrics({"test/top1": 0.9}, step=10)
        logger.log_summary({"seconds": {"fit": 1.5}})
        logger.log_summary({"final": {"budget": 10}})
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    got = [(r["step"], r["key"], float(r["value"])) for r in rows]
    assert got == [
        ("1", "budget_10/train/loss", 0.5),
        ("1", "budget_10/train/acc", 0.25),
        ("2", "budget_10/train/loss", 0.25),
        ("10", "test/top1", 0.9),
    ]
    assert json.loads((tmp_path / "csv" / "config.json").read_text()) == {
        "task": {"name": "small_cnn"},
        "seed": 3,
    }
    # the summary accumulates across calls
    assert json.loads((tmp_path / "csv" / "summary.json").read_text()) == {
        "seconds/fit": 1.5,
        "final/budget": 10,
    }
    # a second logger on the same dir appends (a resumed run) without a second header
    with CSVLogger(str(tmp_path)) as again:
        again.log_metrics({"x": 1.0}, step=3)
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "time,step,key,value" and sum(line.startswith("time,") for line in lines) == 1
    assert lines[-1].endswith(",3,x,1.0")


def test_multi_and_null_loggers(tmp_path: Path) -> None:
    with MultiLogger(
        [CSVLogger(str(tmp_path), name="a"), CSVLogger(str(tmp_path), name="b"), NullLogger()]
    ) as lg:
        lg.log_metrics({"m": 2.0}, step=1)
    for name in ("a", "b"):
        assert (tmp_path / name / "metrics.csv").read_text().splitlines()[1].endswith(",1,m,2.0")


# ------------------------------------------------------------------------------------------------ wandb


def read_wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a ``run-*.wandb`` file (wandb's LevelDB-style log: a 7-byte file header,
    then 32 KiB blocks of records, each ``<crc32 u32><length u16><type u8><data>``, split across blocks as
    FIRST/MIDDLE/LAST pieces)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (kind == 0 and length == 0) or pos + 7 + length > len(data):  # end, or still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_contents(run_dir: Path, wait_s: float = 20.0) -> dict[str, Any]:
    """group/name/tags, config, history rows and summary of an offline run, from its .wandb file.

    ``run.finish()`` can return before wandb's writer process has flushed the file: wait (bounded) for
    the run's ``exit`` record."""
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    records = read_wandb_records(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, f"{path} has no exit record after {wait_s} s"
        time.sleep(0.1)
        records = read_wandb_records(path)
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(group=record.run.run_group, name=record.run.display_name, tags=list(record.run.tags))
            out["config"].update({c.key: json.loads(c.value_json) for c in record.run.config.update})
        elif kind == "config":
            out["config"].update({c.key: json.loads(c.value_json) for c in record.config.update})
        elif kind == "history":
            out["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
    return out


def test_wandb_offline_writes_config_history_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geal.report.loggers.wandb import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with WandbLogger(
        str(tmp_path), project="geal-test", group="sweep-a", name="selector=geal", tags=["t1"]
    ) as lg:
        assert lg.mode == "offline"
        lg.log_config({"task": {"name": "small_cnn", "train": {"epochs": 2}}, "seed": 1})
        lg.log_metrics({"loss": 0.5}, step=1, prefix="budget_10/train")
        lg.log_metrics({"loss": 0.25}, step=2, prefix="budget_10/train")
        lg.log_metrics({"test/top1": 0.75}, step=10)
        lg.log_summary({"final": {"metrics": {"top1": 0.75}}, "seconds": {"total": 3.5}})
        run_dir = Path(lg.run.dir).parent
    got = wandb_contents(run_dir)
    assert got["group"] == "sweep-a" and got["name"] == "selector=geal" and got["tags"] == ["t1"]
    assert (
        got["config"]["task"] == {"name": "small_cnn", "train": {"epochs": 2}} and got["config"]["seed"] == 1
    )
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in got["history"]]
    assert rows == [
        {"budget_10/train/loss": 0.5, "budget_10/train/step": 1.0},
        {"budget_10/train/loss": 0.25, "budget_10/train/step": 2.0},
        {"test/top1": 0.75, "step": 10.0},
    ]
    assert got["summary"]["final/metrics/top1"] == 0.75 and got["summary"]["seconds/total"] == 3.5


def test_wandb_online_without_network_falls_back_or_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from geal.report.loggers.wandb import WandbLogger, wandb_reachable

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.perf_counter()
    assert not wandb_reachable(timeout=1.0)
    with pytest.raises(ConnectionError, match=r"logger.mode=offline.*wandb sync"):
        WandbLogger(str(tmp_path), mode="online", offline_fallback=False)
    with caplog.at_level("WARNING", logger="geal.report.loggers.wandb"):
        lg = WandbLogger(str(tmp_path), mode="online")
    with lg:
        assert lg.mode == "offline"
        lg.log_metrics({"a": 1.0}, step=1)
    assert "unreachable: logging offline" in caplog.text
    assert time.perf_counter() - t0 < 30
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_wandb_bad_mode_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geal.report.loggers.wandb import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ValueError, match="online, offline or disabled"):
        WandbLogger(str(tmp_path), mode="ofline")


def test_tensorboard_logger_writes_events_or_says_what_to_install(tmp_path: Path) -> None:
    from geal.report.loggers.tensorboard import TensorBoardLogger

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            TensorBoardLogger(str(tmp_path))
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TensorBoardLogger(str(tmp_path)) as lg:
        lg.log_config({"seed": 1})
        lg.log_metrics({"loss": 0.5}, step=1, prefix="budget_10/train")
        lg.log_metrics({"loss": 0.25}, step=2, prefix="budget_10/train")
        lg.log_summary({"seconds": {"total": 2.0}})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("budget_10/train/loss")] == [(1, 0.5), (2, 0.25)]
    assert events.Scalars("summary/seconds/total")[0].value == 2.0
