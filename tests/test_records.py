"""RecordTable: a listing's records as columns, the same records back, a few hundred
bytes each."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pipeline.records import DatasetListing, ImageRecord, PartLocation, RecordTable

RECORDS = [
    ImageRecord(
        7,
        "images/001.Bird/a.jpg",
        1,
        True,
        (1.5, 2.0, 30.25, 4.0),
        (PartLocation(1, 3.0, 4.5, True), PartLocation(4, 0.0, 0.0, False)),
        "segmentations/001.Bird/a.png",
    ),
    ImageRecord(2, "top.png", 0, False),  # no folder, no ground truth
    ImageRecord(40, "Images/n1-é/ü 1.jpg", 3, True, None, (), None),  # parts listed: none
    ImageRecord(9, "images/001.Bird/b.jpg", 1, False, (0.0, 0.0, 1.0, 1.0), None, ""),
]


def test_records_come_back_equal_with_their_columns() -> None:
    table = RecordTable(RECORDS)
    assert len(table) == 4 and list(table) == RECORDS and table == RECORDS
    assert table[-1] == RECORDS[-1] and table[1:3] == RECORDS[1:3]
    with pytest.raises(IndexError):
        table[4]
    assert table.image_ids().tolist() == [7, 2, 40, 9]
    assert table.class_ids().tolist() == [1, 0, 3, 1]
    assert table.is_train().tolist() == [True, False, True, False]
    assert table.has_parts().tolist() == [True, False, True, False]
    assert table.has_segmentation().tolist() == [True, False, False, True]
    listing = DatasetListing(records=tuple(RECORDS), class_names=("a", "b", "c", "d"))
    assert isinstance(listing.records, RecordTable) and list(listing.records) == RECORDS


def test_a_record_with_15_parts_takes_a_few_hundred_bytes() -> None:
    """As Python objects (a record, a PartLocation per keypoint) it takes ~2.2 KiB; the
    columns ~450 bytes (~600 measured under pytest)."""
    n = 2000

    def listed():
        for i in range(n):
            yield ImageRecord(
                i + 1,
                f"images/{i % 20:03d}.Class/image_{i:06d}.jpg",
                i % 20,
                i % 3 > 0,
                (float(i), 2.0, 30.0, 40.0),
                tuple(PartLocation(q + 1, i + q / 3, q * 1.5, q % 2 == 0) for q in range(15)),
                f"segmentations/{i % 20:03d}.Class/image_{i:06d}.png",
            )

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = RecordTable(listed())
        per_record = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_record < 1000, f"{per_record:.0f} bytes per record"
    assert table[1234].parts[14] == PartLocation(15, 1234 + 14 / 3, 21.0, True)
    assert np.array_equal(table.image_ids(), np.arange(1, n + 1))
