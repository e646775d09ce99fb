"""Class names shipped with the package, one a line in label order.

`kinetics400.txt`: the Kinetics-400 classes in the label order of the
original's K400 models (the sorted class names of the official CSVs).
"""

from importlib import resources
from typing import List, Optional

SHIPPED = {"kinetics400": "kinetics400.txt"}


def shipped_class_names(dataset: str) -> Optional[List[str]]:
    """The class names of `dataset` if the package ships them, else None."""
    name = SHIPPED.get(dataset)
    if name is None:
        return None
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
