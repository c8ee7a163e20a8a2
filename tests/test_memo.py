"""The bounded memo behind the per-session caches: the oldest entries go first."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.memo import Memo, session_weight
from oauthgate.session import Session


class MemoTests(SynchronousTestCase):
    def test_it_keeps_at_most_max_entries_forgetting_the_oldest(self) -> None:
        memo: Memo[str, int] = Memo(max_entries=3)
        for i, key in enumerate("abc"):
            memo.put(key, i)
        self.assertEqual(memo.get("a"), 0)
        memo.put("d", 3)
        self.assertEqual(len(memo), 3)
        self.assertIsNone(memo.get("a"))
        self.assertEqual([memo.get(k) for k in "bcd"], [1, 2, 3])
        memo.put("b", 4)  # made again: now the newest
        memo.put("e", 5)
        self.assertEqual([memo.get(k) for k in "bcde"], [4, None, 3, 5])

    def test_it_keeps_at_most_max_weight(self) -> None:
        memo: Memo[str, str] = Memo(max_entries=100, max_weight=10)
        memo.put("a", "x", 4)
        memo.put("b", "y", 4)
        memo.put("c", "z", 4)
        self.assertIsNone(memo.get("a"))
        self.assertEqual((memo.get("b"), memo.get("c")), ("y", "z"))
        self.assertEqual(memo.weight, 8)

    def test_an_entry_heavier_than_the_budget_is_not_kept(self) -> None:
        memo: Memo[str, str] = Memo(max_weight=10)
        memo.put("a", "old", 1)
        memo.put("a", "huge", 11)
        self.assertIsNone(memo.get("a"))
        self.assertEqual((len(memo), memo.weight), (0, 0))

    def test_replacing_pop_and_clear_keep_the_weight_right(self) -> None:
        memo: Memo[str, int] = Memo()
        memo.put("a", 1, 5)
        memo.put("a", 2, 7)
        memo.put("b", 3, 1)
        self.assertEqual(memo.weight, 8)
        self.assertEqual(memo.pop("a"), 2)
        self.assertIsNone(memo.pop("a"))
        self.assertEqual(memo.weight, 1)
        memo.clear()
        self.assertEqual((len(memo), memo.weight), (0, 0))

    def test_a_memo_of_no_entries_keeps_nothing(self) -> None:
        memo: Memo[str, int] = Memo(max_entries=0)
        memo.put("a", 1)
        self.assertIsNone(memo.get("a"))

    def test_many_keys_never_grow_it_past_its_bounds(self) -> None:
        memo: Memo[int, int] = Memo(max_entries=50, max_weight=1000)
        for i in range(10_000):
            memo.put(i, i, i % 40)
            self.assertLessEqual(len(memo), 50)
            self.assertLessEqual(memo.weight, 1000)

    def test_a_session_weighs_about_what_its_tokens_hold(self) -> None:
        light = session_weight(Session(user="alice"))
        heavy = session_weight(Session(user="alice", access_token="a" * 4000, id_token="i" * 2000))
        self.assertEqual(heavy - light, 6000)
