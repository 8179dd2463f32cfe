"""Reads a `swe-env harvest` output directory the way a data team would, with `zstandard`, `json` and `pyarrow`
only, and prints what it found as one JSON object (tests/it/harvest.rs compares it with the manifest).

Usage: python harvest_read.py OUT_DIR
"""

import io
import json
import pathlib
import sys

import pyarrow.parquet as pq
import zstandard


def read_shard(path):
    """Every line of a whole shard (one zstd frame per line, read across frames)."""
    with open(path, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        text = io.TextIOWrapper(reader, encoding="utf-8")
        return [json.loads(line) for line in text if line.strip()]


def read_frame(path, offset, length):
    """One rollout from its manifest byte range: a single frame decoded on its own."""
    with open(path, "rb") as f:
        f.seek(offset)
        frame = f.read(length)
    data = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
    assert data.endswith(b"\n") and data.count(b"\n") == 1, f"{path}@{offset}: not one line"
    return json.loads(data)


def main():
    out = pathlib.Path(sys.argv[1])
    shards = sorted((out / "shards").glob("shard-*.jsonl.zst"))
    lines = []
    for shard in shards:
        for line in read_shard(shard):
            lines.append((shard.name, line))
    manifest = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines() if l.strip()]
    frames_ok = 0
    for row in manifest:
        line = read_frame(out / "shards" / row["shard"], row["offset"], row["length"])
        assert line["rollout_id"] == row["rollout_id"], (line["rollout_id"], row["rollout_id"])
        records = line["records"]
        assert records[0]["type"] == "episode_start", records[0].get("type")
        assert records[-1]["type"] == "episode_end", records[-1].get("type")
        assert records[-1]["status"] == row["status"], (records[-1]["status"], row["status"])
        assert line["resolved"] == row["resolved"]
        frames_ok += 1
    table = pq.read_table(out / "manifest.parquet")
    print(
        json.dumps(
            {
                "shards": [s.name for s in shards],
                "shard_lines": len(lines),
                "shard_ids": [line["rollout_id"] for _, line in lines],
                "frames_ok": frames_ok,
                "parquet_rows": table.num_rows,
                "parquet_ids": table.column("rollout_id").to_pylist(),
                "parquet_resolved": table.column("resolved").to_pylist(),
                "parquet_columns": table.column_names,
            }
        )
    )


if __name__ == "__main__":
    main()
