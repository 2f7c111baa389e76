"""Shard arithmetic for job arrays (no Blender)."""
import pytest

from datagen.config import UserError
from datagen.render import parse_shard, shard_ids


def test_shards_partition_the_ids():
    parts = [shard_ids(10, (i, 3)) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(parts, [])) == list(range(10))
    assert shard_ids(10, (0, 1)) == list(range(10))


@pytest.mark.parametrize("text,expected", [(None, (0, 1)), ("0/1", (0, 1)), ("3/4", (3, 4))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1/0", "a/b", "1", "1/2/3"])
def test_bad_shard_names_the_value(text):
    with pytest.raises(UserError, match=f"--shard '{text}'"):
        parse_shard(text)
