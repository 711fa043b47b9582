from engine._store._batching import padded


def test_padded_lists_have_power_of_two_lengths_and_the_same_members() -> None:
    for n in range(1, 130):
        values = list(range(n))
        out = padded(values)
        assert len(out) & (len(out) - 1) == 0  # a power of two
        assert n <= len(out) < 2 * n
        assert out[:n] == values and set(out) == set(values)


def test_padding_bounds_the_number_of_statement_shapes() -> None:
    assert len({len(padded(range(n))) for n in range(1, 101)}) == 8


def test_an_empty_list_stays_empty() -> None:
    assert padded([]) == []
