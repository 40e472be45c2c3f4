"""The Label Studio labeling config for 3-D crops shown as a stack of z-slices.

A task shows a contiguous block of a crop's z-slices as one multi-page image (``valueList``:
the page shows a "1 of N" pager; every region carries ``item_index``, the position of its page
in the list). Some pages are *label pages* (the slices whose labels are kept, chosen where the
model is most unsure); the others are *context*, there to follow a neurite up and down in z.
Every page has its absolute z burned into its top-left corner (digits): black on white on a
label page, grey on black on a context page. The model's doubts are drawn into the same
pages (corner marks around unsure places), so there is one pager only. Beside the pages, a
still overview (max-intensity projections of the crop, the label slices marked) and a napari
command line that opens the crop in 3-D at that place.

Each neuron is one brush label value ``n<id>``, so it keeps its identity (and colour) across
pages. The labels are *dynamic*: each task lists only those its crop needs plus a few spare
(task data ``labels``), in colours away from the data's own hues (red, green, blue and their
mixtures magenta, yellow, cyan). The status is one required choice, done or unsure; Label
Studio's own Skip button skips a task.

Task data keys: ``images`` (page URLs), ``labels`` (the brush labels offered), ``overview``
(a list of one image URL), ``caption`` and ``napari`` (lines of text). Only ``labels`` is read
through a ``value`` attribute of a named tag: Label Studio's direct file upload (how images
go up) refuses a config with more than one such data key.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from activeseg.errors import AnnotationError

IMAGE_NAME = "image"
OVERVIEW_NAME = "overview"
BRUSH_NAME = "instances"
STATUS_NAME = "status"
IMAGES_KEY = "images"
LABELS_KEY = "labels"
OVERVIEW_KEY = "overview"
CAPTION_KEY = "caption"
NAPARI_KEY = "napari"
STATUS_CHOICES = ("done", "unsure")
# Older tasks offered a "skip" choice; ingest still reads it as a skip.
LEGACY_SKIP_CHOICE = "skip"
LABEL_PREFIX = "n"
GUIDE = (
    "Paint every neuron on the pages whose z number (top left) is on white; pages with a grey "
    "number are context, not saved. One label per neuron on all pages; a new neuron takes the "
    "next free label; labels may overlap. White corners mark where the model is unsure."
)
# Hues of the instance colours, in degrees: halfway between the data's red, yellow, green,
# cyan, blue and magenta (0, 60, ..., 300), ordered so that neighbouring ids differ most.
LABEL_HUES = (30, 210, 150, 330, 90, 270)
# (saturation, value) tiers: every hue once per tier before any colour repeats.
LABEL_TIERS = ((0.75, 1.0), (0.45, 0.8), (1.0, 0.6))
DATA_HUES = (0, 60, 120, 180, 240, 300)

MAX_INSTANCE_ID = 2**32 - 1  # instance ids are stored as uint32


def instance_label(instance_id: int) -> str:
    """Return the brush label value of an instance id (``7`` → ``"n7"``)."""
    return f"{LABEL_PREFIX}{instance_id}"


def instance_id(label: str, where: str = "annotation") -> int:
    """Return the instance id of a brush label value (``"n7"`` -> ``7``); AnnotationError if not."""
    digits = label[len(LABEL_PREFIX) :] if label.startswith(LABEL_PREFIX) else ""
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= MAX_INSTANCE_ID:
        raise AnnotationError(
            f"{where}: brush label {label!r} is not an instance label "
            f"({LABEL_PREFIX}1, {LABEL_PREFIX}2, ...)"
        )
    return int(digits)


def instance_color(instance_id: int) -> str:
    """Return the ``#rrggbb`` colour of an instance id, away from the data's hues.

    Six hues between the channels' own, in three (saturation, value) tiers: the first 18
    ids get distinct colours; later ones cycle.
    """
    index = (instance_id - 1) % (len(LABEL_HUES) * len(LABEL_TIERS))
    hue = LABEL_HUES[index % len(LABEL_HUES)]
    saturation, value = LABEL_TIERS[index // len(LABEL_HUES)]
    red, green, blue = colorsys.hsv_to_rgb(hue / 360.0, saturation, value)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def offered_labels(count: int) -> list[dict[str, str]]:
    """Return the dynamic brush labels ``n1`` … ``n<count>`` of a task (task data ``labels``)."""
    return [
        {"value": instance_label(i), "background": instance_color(i)} for i in range(1, count + 1)
    ]


def brush_labels_xml() -> str:
    """Return the ``<BrushLabels>`` element whose labels come from the task's ``labels``."""
    return (
        f'  <BrushLabels name="{BRUSH_NAME}" toName="{IMAGE_NAME}" value="${LABELS_KEY}" '
        'showInline="true"/>'
    )


def status_choices_xml(choices: Sequence[str] = STATUS_CHOICES) -> str:
    """Return the ``<Choices>`` element: one required status, done or unsure (radio buttons)."""
    options = "\n".join(f"    <Choice value={quoteattr(choice)}/>" for choice in choices)
    return (
        f'  <Choices name="{STATUS_NAME}" toName="{IMAGE_NAME}" choice="single-radio" '
        f'required="true" showInline="true">\n{options}\n  </Choices>'
    )


def labeling_config() -> str:
    """Return the labeling config XML: pages to paint, the overview, labels and status."""
    return "\n".join(
        [
            "<View>",
            f'  <Header value="${CAPTION_KEY}" size="5"/>',
            f'  <Header value={quoteattr(GUIDE)} size="6"/>',
            '  <View style="display: flex; gap: 1em; align-items: flex-start;">',
            '    <View style="flex: 3;">',
            f'      <Image name="{IMAGE_NAME}" valueList="${IMAGES_KEY}" zoom="true" '
            'zoomControl="true" smoothing="false"/>',
            "    </View>",
            '    <View style="flex: 1;">',
            # A list of one image: direct file upload needs at most one data key in `value`s.
            f'      <Image name="{OVERVIEW_NAME}" valueList="${OVERVIEW_KEY}" smoothing="false"/>',
            "    </View>",
            "  </View>",
            brush_labels_xml(),
            status_choices_xml(),
            f'  <Header value="${NAPARI_KEY}" size="6" underline="false"/>',
            "</View>",
        ]
    )


def task_status(results: Sequence[dict[str, object]]) -> str | None:
    """Return the chosen status (done / unsure, or a legacy skip) in a result list, or None."""
    for result in results:
        value = result.get("value")
        if result.get("from_name") == STATUS_NAME and isinstance(value, dict):
            choices = value.get("choices") or []
            return str(choices[0]) if choices else None
    return None


def status_result(choice: str) -> dict[str, object]:
    """Return the result that picks a status choice (done / unsure) for a task."""
    if choice not in STATUS_CHOICES:
        raise ValueError(f"status must be one of {STATUS_CHOICES}, got {choice!r}")
    return {
        "id": "status",
        "from_name": STATUS_NAME,
        "to_name": IMAGE_NAME,
        "type": "choices",
        "value": {"choices": [choice]},
    }
