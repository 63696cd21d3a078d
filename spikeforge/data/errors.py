"""The one exception the data layer raises."""

from __future__ import annotations

import os


class DatasetError(RuntimeError):
    """A data set cannot be found, downloaded or read. The message names the file or folder
    concerned and says what to do about it."""


def corrupt(path: str | os.PathLike, problem: str) -> DatasetError:
    """The error for a damaged file: what is wrong and that it should be deleted and fetched
    again."""
    return DatasetError(f"{path}: {problem}. The file is truncated or corrupt; delete it and "
                        "download it again.")
