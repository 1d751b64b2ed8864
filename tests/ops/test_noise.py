"""Philox noise: known-answer vectors, independence of batch layout, statistics."""

import pytest
import torch

from fastddpm.ops import noise


def words(*values):
    return tuple(torch.tensor(v, dtype=torch.int64) for v in values)


@pytest.mark.parametrize(
    "counter,seed,expected",
    [
        # Random123's known-answer tests for philox4x32-10 (kat_vectors).
        ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, 0xFFFFFFFFFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            0x299F31D0A4093822,
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_known_answers(counter, seed, expected):
    assert tuple(int(w) for w in noise.philox4x32(*words(*counter), seed)) == expected


def test_each_sample_depends_only_on_seed_index_and_stream():
    # Exact: each element's normal is the same integer Philox words and the same float32 Box-Muller, through
    # fastddpm._C's box_muller (one code path for every element) or, without it, torch's elementwise log /
    # cos / sqrt, whose values do not depend on an element's position (checked with torch 2.14 under
    # ATEN_CPU_CAPABILITY=default / avx2 / avx512, 1 and 2 threads, Intel Xeon).
    whole = noise.philox_normal(7, 0, 9, (3, 5, 4), 12)
    for start, count in [(0, 1), (2, 3), (5, 4)]:
        part = noise.philox_normal(7, start, count, (3, 5, 4), 12)
        assert torch.equal(part, whole[start : start + count])
    as_tensor = noise.philox_normal(7, 0, 9, (3, 5, 4), torch.tensor(12))
    assert torch.equal(as_tensor, whole)
    assert not torch.equal(noise.philox_normal(8, 0, 9, (3, 5, 4), 12), whole)
    assert not torch.equal(noise.philox_normal(7, 0, 9, (3, 5, 4), 13), whole)


def test_normal_statistics_and_no_correlation_between_neighbours():
    z = noise.philox_normal(2024, 0, 64, (3, 16, 16), 1)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.02
    flat = z.reshape(64, -1)
    neighbours = torch.corrcoef(torch.stack([flat[:-1].flatten(), flat[1:].flatten()]))[0, 1]
    next_stream = noise.philox_normal(2024, 0, 64, (3, 16, 16), 2).flatten()
    across_steps = torch.corrcoef(torch.stack([z.flatten(), next_stream]))[0, 1]
    assert abs(float(neighbours)) < 0.01 and abs(float(across_steps)) < 0.01
    # tails: a fair normal puts ~0.27% beyond 3 sigma
    assert 0.0015 < float((z.abs() > 3).float().mean()) < 0.0040


def test_seed_out_of_range_raises():
    with pytest.raises(ValueError, match="seed"):
        noise.philox_normal(-1, 0, 1, (1,), 0)
