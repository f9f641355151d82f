"""The templates a method's release gives its frozen text side where they are not CoOp's.

Every method whose text side holds a fixed template takes the data set's own (CoOp's per-data-set
template, `training.benchmarks`). Two releases chose differently for some data sets: ProVP's
frozen class side puts the type before the photo on five of them (``CUSTOM_TEMPLATES`` in
MCG-NJU/ProVP, ``trainers/provp.py``), and SEP's frozen ``t_0`` uses KgCoOp's templates on four
(``CUSTOM_TEMPLATES_ori`` in htyao89/SEP, ``trainers/sep.py``). On every other data set the two
releases use CoOp's template, so they have no entry here.

The table sits between the data and the preset in `training.recipe`'s layers: data < method <
preset < ``--set``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# (method, Dassl data-set name) -> the template that method's release uses on that data set
METHOD_TEMPLATES: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("provp", "OxfordPets"): "a type of pet, a photo of a {}.",
        ("provp", "OxfordFlowers"): "a type of flower, a photo of a {}.",
        ("provp", "FGVCAircraft"): "a type of aircraft, a photo of a {}.",
        ("provp", "Food101"): "a type of food, a photo of {}.",
        ("provp", "DescribableTextures"): "a texture of {}.",
        ("sep", "FGVCAircraft"): "a photo of an aircraft {}.",
        ("sep", "DescribableTextures"): "a photo of a {}, a type of texture.",
        ("sep", "StanfordCars"): "a photo of a {}, a type of car.",
        ("sep", "Food101"): "a photo of a {}, a type of food.",
    }
)


def method_template(method: str, dataset: str | None, template: str | None) -> str | None:
    """The template `method` prompts data set `dataset` with: its release's own where the table
    has one, else the data set's `template` (None when the data names none)."""
    if dataset is None or template is None:
        return template
    return METHOD_TEMPLATES.get((method, dataset), template)
