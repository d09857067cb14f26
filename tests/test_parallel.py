"""doomnet.parallel: row ranges cover the batch in order, and BLAS gets its threads back."""

import numpy as np
import pytest

from doomnet import parallel


def test_ranges_cover_all_rows_in_order_and_small_batches_stay_on_one_range():
    ranges = parallel.map_row_ranges(lambda a, b: (a, b), 10, min_rows=1)
    assert ranges[0][0] == 0 and ranges[-1][1] == 10
    assert all(left[1] == right[0] for left, right in zip(ranges, ranges[1:], strict=False))
    assert len(ranges) == min(parallel.cores(), 10)
    assert parallel.map_row_ranges(lambda a, b: (a, b), 10, min_rows=100) == [(0, 10)]


def test_blas_threads_are_restored_even_if_a_range_fails():
    before = parallel.cores()

    def work(a: int, b: int) -> int:
        np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)
        if a == 0:
            raise RuntimeError("boom")
        return b - a

    with pytest.raises(RuntimeError, match="boom"):
        parallel.map_row_ranges(work, 1000, min_rows=1)
    assert parallel.cores() == before
