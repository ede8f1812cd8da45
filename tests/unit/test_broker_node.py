"""The broker node's reading of the server's key answers (brokers/node.py), without I/O."""

from __future__ import annotations

import pytest

from edgefleet.brokers.node import KeyStore, SyncAnswerError, parse_psk_file, parse_sync

A, B, C = "a" * 8, "b" * 8, "c" * 8


def test_a_full_answer_replaces_the_store_and_names_the_keys_gone_or_replaced() -> None:
    store = KeyStore({A: "01", B: "02"})
    change = store.apply(parse_sync(f"# cursor=7 full\n{A}:01\n{C}:03\n"))
    assert store.keys == {A: "01", C: "03"}
    assert change.changed and change.gone == {B}
    again = store.apply(parse_sync(f"# cursor=7 full\n{A}:01\n{C}:03\n"))
    assert not again.changed and not again.gone


def test_changes_set_and_remove_keys_and_an_unchanged_answer_changes_nothing() -> None:
    store = KeyStore({A: "01", B: "02"})
    answer = parse_sync(f"# cursor=9 changes\n{C}:03\n{A}:ff\n-{B}\n-{'d' * 8}\n")
    assert answer.cursor == 9 and not answer.full
    change = store.apply(answer)
    assert store.keys == {A: "ff", C: "03"}
    assert change.changed and change.gone == {A, B}  # A's old key, B removed
    assert not store.apply(parse_sync("# cursor=9 changes\n")).changed
    assert not store.apply(parse_sync(f"# cursor=10 changes\n{C}:03\n")).changed  # twice


def test_only_an_added_key_changes_the_store_without_closing_sessions() -> None:
    store = KeyStore()
    change = store.apply(parse_sync(f"# cursor=1 changes\n{A}:01\n"))
    assert change.changed and not change.gone
    assert store.text() == f"{A}:01\n"


def test_the_store_is_written_sorted_in_mosquittos_format() -> None:
    store = KeyStore({C: "03", A: "01"})
    assert store.text() == f"{A}:01\n{C}:03\n"
    assert parse_psk_file(store.text()) == {A: "01", C: "03"}


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "<html>proxy error</html>\n",
        "# cursor=x full\n",
        "# cursor=1 partial\n",
        f"# cursor=1 full\n-{A}\n",
        f"# cursor=1 changes\n{A}\n",
        f"# cursor=1 changes\n{A}:xyz\n",
        f"# cursor=1 changes\n{A}:abc\n",
        "# cursor=1 changes\n:00\n",
        "# cursor=1 changes\n-\n",
    ],
)
def test_an_answer_that_is_not_a_key_file_is_refused(answer: str) -> None:
    with pytest.raises(SyncAnswerError):
        parse_sync(answer)


def test_a_refused_answer_does_not_say_the_keys() -> None:
    with pytest.raises(SyncAnswerError) as err:
        parse_psk_file(f"{A}:{'zz' * 32}\n")
    assert "zz" not in err.value.message and A not in err.value.message
