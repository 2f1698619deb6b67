"""The reader of `name(a, key=value)` now lives in cnnlab/calls.py, below every layer that reads such
text (the augmentation spec is read by settings.py, which stands below teach/); this name stays so
that teaching code keeps importing it from its own layer."""

from cnnlab.calls import Arg, Call, Value, parse_call

__all__ = ["Arg", "Call", "Value", "parse_call"]
