"""The Label Studio labeling config for 3-D crops shown as a few z-slices.

A task shows the chosen z-slices of one crop as a multi-page image (``valueList``: the page
shows a "1 of N" pager; every region carries ``item_index``, the position of its slice in the
list). Beside it, a second multi-page image shows the same slices with the model's uncertainty
painted over them. Label Studio cannot stack two images in one view, and the two pagers are
independent: the annotator pages through both. Each predicted neuron is one brush label value
``n<id>`` so it keeps its identity (and colour) across slices.

Task data keys: ``images`` and ``overlays`` (lists of image URLs, one per shown slice, same
order) and ``caption`` (a line of text: which crop, which slices and why they were chosen).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from activeseg.errors import AnnotationError

IMAGE_NAME = "image"
OVERLAY_NAME = "uncertainty"
BRUSH_NAME = "instances"
STATUS_NAME = "status"
IMAGES_KEY = "images"
OVERLAYS_KEY = "overlays"
CAPTION_KEY = "caption"
STATUS_CHOICES = ("done", "unsure", "skip")
LABEL_PREFIX = "n"
# Golden-ratio hue steps keep neighbouring ids far apart in colour.
GOLDEN = 0.618033988749895


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
    """Return a distinct, saturated ``#rrggbb`` colour for an instance id."""
    hue = (instance_id * GOLDEN) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def brush_labels_xml(max_instances: int) -> str:
    """Return the ``<BrushLabels>`` element with label values n1 … n<max_instances>."""
    labels = "\n".join(
        f'    <Label value="{instance_label(i)}" background="{instance_color(i)}"/>'
        for i in range(1, max_instances + 1)
    )
    return f'  <BrushLabels name="{BRUSH_NAME}" toName="{IMAGE_NAME}">\n{labels}\n  </BrushLabels>'


def status_choices_xml(choices: Sequence[str] = STATUS_CHOICES) -> str:
    """Return the ``<Choices>`` element where the annotator says done / unsure / skip."""
    options = "\n".join(f"    <Choice value={quoteattr(choice)}/>" for choice in choices)
    return (
        f'  <Choices name="{STATUS_NAME}" toName="{IMAGE_NAME}" choice="single" '
        f'showInline="true">\n{options}\n  </Choices>'
    )


def labeling_config(max_instances: int) -> str:
    """Return the labeling config XML for crops with up to ``max_instances`` neurons."""
    if max_instances < 1:
        raise ValueError(f"max_instances must be at least 1, got {max_instances}")
    return "\n".join(
        [
            "<View>",
            f'  <Header value="${CAPTION_KEY}"/>',
            '  <View style="display: flex; gap: 1em;">',
            '    <View style="flex: 1;">',
            f'      <Image name="{IMAGE_NAME}" valueList="${IMAGES_KEY}" zoom="true" '
            'zoomControl="true" smoothing="false"/>',
            "    </View>",
            '    <View style="flex: 1;">',
            f'      <Image name="{OVERLAY_NAME}" valueList="${OVERLAYS_KEY}" zoom="true" '
            'smoothing="false"/>',
            "    </View>",
            "  </View>",
            brush_labels_xml(max_instances),
            status_choices_xml(),
            "</View>",
        ]
    )


def task_status(results: Sequence[dict[str, object]]) -> str | None:
    """Return the chosen status (done / unsure / skip) in an annotation's results, or None."""
    for result in results:
        value = result.get("value")
        if result.get("from_name") == STATUS_NAME and isinstance(value, dict):
            choices = value.get("choices") or []
            return str(choices[0]) if choices else None
    return None


def status_result(choice: str) -> dict[str, object]:
    """Return the result that picks a status choice (done / unsure / skip) for a task."""
    if choice not in STATUS_CHOICES:
        raise ValueError(f"status must be one of {STATUS_CHOICES}, got {choice!r}")
    return {
        "id": "status",
        "from_name": STATUS_NAME,
        "to_name": IMAGE_NAME,
        "type": "choices",
        "value": {"choices": [choice]},
    }
