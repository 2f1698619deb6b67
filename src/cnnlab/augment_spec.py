"""The augmentation spec: `--augment "flip, rotation(15), jitter(0.2, 0.2, 0.2), crop(4)"` read, checked and
printed back. Torch-free, since settings.py checks a spec and the CLI's parser reads settings.py.

    spec := none | item, item, ...      items apply in the order written, to each image with its own draw
    item := name | name(value, ..., key=value, ...)     (cnnlab/calls.py reads each item)

The items are lecture 002's list of torchvision transforms (the name of each in `KINDS`); data/augment.py
applies them. The old names stay valid and mean what they meant: `none`, `flip`, `crop` (padding 2) and
`crop+flip` (`crop, flip`), so that run folders holding them train on as they began.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

from cnnlab.calls import Call, parse_call
from cnnlab.errors import UsageError

LEGACY = {"crop+flip": "crop, flip"}  # an old name that is not an item list


def _number(value: float) -> str:
    """A value as a spec writes it: 15, 0.2 (repr's digits, so the text reads back to the same float)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class Param:
    """One parameter of an item: its default (None: required) and the range it must lie in."""

    name: str
    default: float | None
    low: float
    high: float
    low_open: bool = True  # the low end itself is refused
    high_open: bool = False
    integer: bool = False

    def allowed(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low  # NaN fails both
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    @property
    def range(self) -> str:
        """The range in words: "above 0 and at most 180", "from 0 to 1", "above 0 and below 1"."""
        low = f"above {self.low:g} and" if self.low_open else f"from {self.low:g}"
        high = "below" if self.high_open else "at most" if self.low_open else "to"
        return f"{'a whole number ' if self.integer else ''}{low} {high} {self.high:g}"


@dataclass(frozen=True)
class Kind:
    """An item's name, parameters and what it does (the torchvision transform it is)."""

    name: str
    params: tuple[Param, ...]
    does: str
    example: str

    @property
    def form(self) -> str:
        """How it is written, defaults shown: `crop(padding=2)`, `rotation(degrees)`."""
        shown = [p.name if p.default is None else f"{p.name}={_number(p.default)}" for p in self.params]
        return f"{self.name}({', '.join(shown)})"


_P = Param("p", 0.5, 0, 1)  # a probability: 0 would never apply the item
_JITTER = Param("brightness", 0, 0, 1, low_open=False)  # factors in [1 - b, 1 + b]: above 1 the low end is 0

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("flip", (_P,), "mirror left-right with probability p (RandomHorizontalFlip)", "flip"),
    Kind("vflip", (_P,), "mirror upside down with probability p (RandomVerticalFlip)", "vflip"),
    Kind("crop", (Param("padding", 2, 1, 64, low_open=False, integer=True),),
         "pad each side with `padding` zeros, crop back to size at a random offset (RandomCrop)", "crop(4)"),
    Kind("rotation", (Param("degrees", None, 0, 180),), "rotate by an angle in [-degrees, degrees], "
         "bilinear, corners filled with 0 (RandomRotation)", "rotation(15)"),
    Kind("scale", (Param("amount", None, 0, 1, high_open=True),), "resize by a factor in [1 - amount, "
         "1 + amount] about the centre and keep the size: crops or pads with 0 (Resize, as an augmentation)",
         "scale(0.2)"),
    Kind("jitter", (_JITTER, Param("contrast", 0, 0, 1, low_open=False), Param("saturation", 0, 0, 1, low_open=False),
                    Param("hue", 0, 0, 0.5, low_open=False)),
         "brightness, contrast and saturation times a factor in [1 - x, 1 + x], hue shifted by up to `hue`, "
         "in a random order per image (ColorJitter)", "jitter(0.2, 0.2, 0.2)"),
    Kind("grayscale", (Param("p", 0.1, 0, 1),), "turn grey with probability p, keeping the channels "
         "(RandomGrayscale; the lecture's Grayscale is grayscale(1))", "grayscale(0.1)"),
)}
FORMS = tuple(k.form for k in KINDS.values())  # for help texts and error messages
# Names people may try, for "did you mean"; only the names in KINDS are read, so config.json has one spelling.
_LIKELY = {"rotate": "rotation", "hflip": "flip", "resize": "scale", "zoom": "scale", "colorjitter": "jitter",
           "randomcrop": "crop", "greyscale": "grayscale", "gray": "grayscale", "grey": "grayscale",
           **dict.fromkeys(("brightness", "contrast", "saturation", "hue"), "jitter")}


@dataclass(frozen=True)
class Item:
    """One item of a spec with every parameter's value, in `KINDS[name].params`' order."""

    name: str
    args: tuple[float, ...]

    @property
    def kind(self) -> Kind:
        return KINDS[self.name]

    def __getitem__(self, param: str) -> float:
        """The value of a parameter by name: item["degrees"]."""
        return self.args[[p.name for p in self.kind.params].index(param)]

    def __str__(self) -> str:
        """The canonical text: trailing parameters at their defaults are left out (`crop`, `jitter(0.2)`)."""
        args = list(self.args)
        for param in reversed(self.kind.params):
            if not args or args[-1] != param.default:
                break
            args.pop()
        return f"{self.name}({', '.join(map(_number, args))})" if args else self.name


@dataclass(frozen=True)
class Augmentation:
    """A parsed spec: its items in the order they apply; none is no items."""

    items: tuple[Item, ...] = ()

    def __str__(self) -> str:
        return ", ".join(map(str, self.items)) or "none"


def parse_augment(text: str) -> Augmentation:
    """Read and check a spec; a UsageError names what is wrong and the items there are."""
    if not isinstance(text, str):
        raise UsageError(f"an augmentation is text such as 'flip, crop(4)', got {text!r}")
    return _parse(text)


@functools.lru_cache(maxsize=64)  # the loader reads its spec once per batch
def _parse(text: str) -> Augmentation:
    text = LEGACY.get(text.strip().lower(), text)
    if text.strip().lower() == "none":
        return Augmentation()
    if not text.strip():
        raise UsageError(f"the augmentation is empty; use none, or items from: {', '.join(FORMS)}")
    parts = _split(text)
    if any(p.strip().lower() == "none" for p in parts):
        raise UsageError(f"augmentation {text!r}: none stands alone; leave it out of a list of items")
    return Augmentation(tuple(_item(p.strip(), text) for p in parts))


def _split(text: str) -> list[str]:
    """`text` cut at the commas outside parentheses (an item's own arguments are separated by commas too)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise UsageError(f"augmentation {text!r}: a ')' without its '('")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise UsageError(f"augmentation {text!r}: a '(' without its ')'")
    parts.append(text[start:])
    if any(not p.strip() for p in parts):
        raise UsageError(f"augmentation {text!r} has an empty item; write items such as 'flip, rotation(15)', "
                         "or none")
    return parts


def _item(source: str, spec: str) -> Item:
    call = parse_call(source, "augmentation item", KINDS["rotation"].example)
    if call.name not in KINDS:
        guess = _LIKELY.get(call.name) or next(iter(difflib.get_close_matches(call.name, KINDS, n=1)), None)
        hint = f"did you mean {guess}? " if guess else ""
        raise UsageError(f"unknown augmentation {call.name!r}; {hint}use none, or items from: {', '.join(FORMS)}"
                         + (f" (in {spec!r})" if source != spec.strip() else ""))
    kind = KINDS[call.name]
    item = Item(kind.name, tuple(_value(kind, p, v, source) for p, v in zip(kind.params, _bind(kind, call, source))))
    if kind.name == "jitter" and not any(item.args):
        raise UsageError(f"augmentation {source!r}: jitter changes nothing with every amount 0; {kind.does}; "
                         f"e.g. {kind.example}")
    return item


def _bind(kind: Kind, call: Call, source: str) -> list[str | None]:
    """Each parameter's text as written (None where left out), from positional and key=value arguments."""
    names = [p.name for p in kind.params]
    given: dict[str, str] = {}
    for i, arg in enumerate(call.args):
        if arg.key is None:
            if any(a.key is not None for a in call.args[:i]):  # as in Python: positional values come first
                raise UsageError(f"augmentation {source!r}: a value without a name after a name=value one")
            if i >= len(names):
                raise UsageError(f"augmentation {source!r}: {kind.name} takes at most {len(names)} value{'s' * (len(names) > 1)} "
                                 f"({', '.join(names)}); write it as {kind.form}")
            given[names[i]] = arg.text
        elif arg.key not in names:
            raise UsageError(f"augmentation {source!r}: {kind.name} has no {arg.key!r}; write it as {kind.form}")
        elif arg.key in given:
            raise UsageError(f"augmentation {source!r}: {arg.key} is given twice")
        else:
            given[arg.key] = arg.text
    return [given.get(n) for n in names]


def _value(kind: Kind, param: Param, text: str | None, source: str) -> float:
    if text is None:
        if param.default is None:
            raise UsageError(f"augmentation {source!r}: {kind.name} needs its {param.name}, e.g. {kind.example}")
        return param.default
    fix = f"; {kind.name}: {kind.does}; e.g. {kind.example}"
    try:
        value = float(text) if not param.integer else int(text)
    except ValueError:
        raise UsageError(f"augmentation {source!r}: {param.name} must be {param.range}, got {text!r}{fix}") from None
    if not param.allowed(value):
        raise UsageError(f"augmentation {source!r}: {param.name} must be {param.range}, got {text}{fix}")
    return value
