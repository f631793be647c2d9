"""Field checks and (de)serialization shared by the frozen configs of ``rpn_tf.config``."""

from __future__ import annotations

import dataclasses

from rpn_tf.ops.box_coder import BoxCoder


def positive_int_field(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")
    return int(value)


def fraction_field(owner: str, name: str, value, low_open=False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
            (0.0 < value if low_open else 0.0 <= value) and value <= 1.0):
        raise ValueError(f"{owner}.{name} must be in {'(0' if low_open else '[0'}, 1], got {value!r}")
    return float(value)


def seed_field(owner: str, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{owner}.seed must be None or an int, got {value!r}")
    return value


def box_coder_field(owner: str, value) -> BoxCoder:
    if isinstance(value, BoxCoder):
        return value
    if isinstance(value, dict):  # from a serialized config
        return BoxCoder(**value)
    raise TypeError(f"{owner}.box_coder must be a BoxCoder, got {type(value).__name__}")


def config_from_kwargs(config_class, config=None, kwargs=None):
    """A ``config_class`` instance from an instance (or a dict of fields) plus keyword overrides.

    ``delta_weights=(wy, wx, wh, ww)`` is accepted as a shorthand for ``box_coder=BoxCoder(weights)``.
    Unknown keywords raise ``TypeError`` naming them and the valid fields.
    """
    kwargs = dict(kwargs or {})
    if "delta_weights" in kwargs:
        kwargs["box_coder"] = BoxCoder(tuple(kwargs.pop("delta_weights")))
    if isinstance(config, dict):
        config = config_class(**config)
    fields = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise TypeError(f"unknown {config_class.__name__} fields {unknown}; valid: {sorted(fields)} "
                        "(and delta_weights)")
    if config is None:
        return config_class(**kwargs)
    if not isinstance(config, config_class):
        raise TypeError(f"expected a {config_class.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **kwargs) if kwargs else config


def config_to_dict(config) -> dict:
    """A JSON-ready dict of a config dataclass (nested ``BoxCoder`` → dict, tuples → lists)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value
    return plain(config)
