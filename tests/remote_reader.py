"""What a URL's report says differently from a local file's report, by definition.

Since the native reader (issue #22), a local torch.save zip file or DCP folder is read without
torch (``file.reader: "native"``), while a URL is always read with torch (``"torch"``, with a
``reader_note`` saying why, and a dim ``read with torch: ...`` line in the human view). The
remote tests compare a URL's report with the same checkpoint's local report, so:

- ``without_reader`` drops ``reader`` / ``reader_note`` from every file dict (a dict with a
  ``format``: inspect's ``file``, diff's ``a`` / ``b``): they name the reader, not the state;
- ``LOCAL_READ_WITH_TORCH`` (set it with ``monkeypatch.setenv(*LOCAL_READ_WITH_TORCH)``) reads
  the local side with torch too, where the two reports' statistics are compared exactly: the
  native kernels sum in another order than torch (a norm may differ in its last bit, within
  ``numeric.tolerance.sum_rtol``), and that agreement is tests/test_reader_equivalence.py's to
  check, not the remote tests' (they check that the bytes read from a URL are the file's);
- ``without_reader_line`` is the human view's lines without the ``read with torch: ...`` line.
"""

from __future__ import annotations

READER_KEYS = ("reader", "reader_note")
LOCAL_READ_WITH_TORCH = ("OPTSTATE_READER", "torch")
READER_LINE = "read with torch: "


def without_reader(doc):
    """``doc`` (a report, or any part of one) with the reader's keys dropped from its file
    dicts; everything else as it is."""
    if isinstance(doc, dict):
        return {k: without_reader(v) for k, v in doc.items()
                if not ("format" in doc and k in READER_KEYS)}
    if isinstance(doc, list):
        return [without_reader(v) for v in doc]
    return doc


def without_reader_line(text: str) -> list[str]:
    """The lines of a human view, without the dim ``read with torch: ...`` line a URL's
    report prints (a URL is always read with torch: see the module docstring)."""
    return [line for line in text.splitlines() if not line.strip().startswith(READER_LINE)]
