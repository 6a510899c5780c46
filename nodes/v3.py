"""ComfyUI's V3 node API (``comfy_api.latest``), generated from each node's one V1 declaration.

ComfyUI has two node APIs. V1: a class with ``INPUT_TYPES`` and the attributes `declare.node` sets, listed in
``NODE_CLASS_MAPPINGS``. V3 (``comfy_api.latest``, where new node features land): an ``io.ComfyNode`` subclass whose
``define_schema`` returns an ``io.Schema`` of typed inputs and outputs and whose classmethod ``execute`` runs it, listed
by the ``ComfyExtension`` that ``comfy_entrypoint()`` returns. ComfyUI's loader takes ``NODE_CLASS_MAPPINGS`` first
when a pack exports both, so the pack's entry (top-level ``__init__.py``) exports one or the other.

Each node is declared once, in V1 form; its V3 node is derived here, with the same node id, the same inputs in the
same order with the same options, and the same outputs, so a saved workflow loads under either API. Two halves:

* `describe` reads a V1 class into a `NodeSpec`, a neutral description in plain data, and `v3_arguments` maps one
  input's V1 options to the keywords of its V3 constructor; neither needs ComfyUI (tests run them in CI).
* `v3_node` and `comfy_entrypoint` build the V3 classes with the server's own ``comfy_api.latest``. ``define_schema``
  describes the V1 class afresh at every call, so lists computed in ``INPUT_TYPES`` (the model files) are re-read
  whenever ComfyUI asks (``/object_info``, prompt validation), as under V1.

Progress, previews and Cancel stay on ``comfy.utils.ProgressBar`` (`comfy_compat.progress_callback`): in V3 servers
it feeds the same progress registry as V3's ``execution.set_progress``, and also sends the websocket ``progress``
event and checks for Cancel, which ``set_progress`` does not.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from . import comfy_compat as cc

COMBO = "COMBO"
SECTIONS = ("required", "optional")
# The V3 classes of the widget kinds, by name in ``comfy_api.latest.io``; other types are looked up by their io_type.
WIDGET_TYPES = {"INT": "Int", "FLOAT": "Float", "STRING": "String", "BOOLEAN": "Boolean", COMBO: "Combo"}
# V1 node attributes carried to ``io.Schema`` fields (passed only where the class sets them).
SCHEMA_FLAGS = {"OUTPUT_NODE": "is_output_node", "INPUT_IS_LIST": "is_input_list", "NOT_IDEMPOTENT": "not_idempotent",
                "DEPRECATED": "is_deprecated", "EXPERIMENTAL": "is_experimental"}
# V1 class methods -> the V3 classmethods that forward to them, with the same signature (ComfyUI reads it: a
# VALIDATE_INPUTS naming an input gets that input and replaces ComfyUI's own checks of it, under either API).
FORWARDED = {"VALIDATE_INPUTS": "validate_inputs", "IS_CHANGED": "fingerprint_inputs"}
# V1 features that are not carried: a node using one is refused by name rather than converted in part.
UNSUPPORTED = ("check_lazy_status",)

# V1 option -> keyword of the V3 input's constructor. The V3 input writes each keyword back under the V1 key, so
# /object_info shows the same options; options without a keyword here (or that this server's constructor lacks:
# ComfyUI 0.3.64 has no raw_link or advanced) go to the input's extra_dict, which is written back as it is.
_COMMON = {"tooltip": "tooltip", "display_name": "display_name", "lazy": "lazy", "rawLink": "raw_link",
           "advanced": "advanced"}
_WIDGET = {**_COMMON, "default": "default", "socketless": "socketless", "forceInput": "force_input"}
_NUMBER = {**_WIDGET, "min": "min", "max": "max", "step": "step", "display": "display_mode"}
KEYWORDS: dict[str, dict[str, str]] = {
    "INT": {**_NUMBER, "control_after_generate": "control_after_generate"},
    "FLOAT": {**_NUMBER, "round": "round"},
    "STRING": {**_WIDGET, "multiline": "multiline", "placeholder": "placeholder", "dynamicPrompts": "dynamic_prompts"},
    "BOOLEAN": {**_WIDGET, "label_on": "label_on", "label_off": "label_off"},
    COMBO: {**_WIDGET, "control_after_generate": "control_after_generate"},
}


# ------------------------------------------------------------------------------------------------ neutral description
@dataclass(frozen=True)
class InputSpec:
    """One V1 input. ``kind``: INT, FLOAT, STRING, BOOLEAN, COMBO, or a socket type (IMAGE, MASK, IMAGEN_MODEL ...);
    ``options``: the V1 options as declared; ``choices``: a combo's entries (as INPUT_TYPES listed them just now)."""
    name: str
    kind: str
    optional: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple = ()


@dataclass(frozen=True)
class OutputSpec:
    kind: str
    name: str
    tooltip: str | None = None
    is_list: bool = False


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    category: str
    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    flags: Mapping[str, bool] = field(default_factory=dict)  # io.Schema fields the V1 class sets (is_output_node...)
    validated: frozenset[str] = frozenset()  # inputs the node's VALIDATE_INPUTS checks itself (ComfyUI skips them)


def describe(cls: type, node_id: str | None = None) -> NodeSpec:
    """The neutral description of the V1 node class ``cls`` (its id: ``node_id``, by default the class name).

    Calls ``cls.INPUT_TYPES()``, so computed combos are current. Required inputs come first, then optional ones, each
    in declaration order, as ComfyUI orders a V1 node's widgets."""
    node_id = node_id or cls.__name__
    for name in UNSUPPORTED:
        if hasattr(cls, name):
            raise ValueError(f"node {node_id}: {name} is a V1 feature that nodes/v3.py does not carry to ComfyUI's V3 "
                             f"API; add its mapping there, or drop it from the node")
    declared = cls.INPUT_TYPES()
    extra_sections = sorted(set(declared) - set(SECTIONS))
    if extra_sections:
        raise ValueError(f"node {node_id}: INPUT_TYPES sections {extra_sections} are not carried to ComfyUI's V3 API "
                         f"by nodes/v3.py (it carries {list(SECTIONS)}); add them there, or drop them from the node")
    inputs = tuple(_input_spec(node_id, name, spec, section == "optional")
                   for section in SECTIONS for name, spec in declared.get(section, {}).items())
    kinds = tuple(cls.RETURN_TYPES)
    names = tuple(getattr(cls, "RETURN_NAMES", None) or kinds)
    tooltips = tuple(getattr(cls, "OUTPUT_TOOLTIPS", None) or ()) + (None,) * len(kinds)
    lists = tuple(getattr(cls, "OUTPUT_IS_LIST", None) or ()) + (False,) * len(kinds)
    for kind in kinds:
        if not isinstance(kind, str):
            raise ValueError(f"node {node_id}: output type {kind!r} is not a type name; nodes/v3.py carries only "
                             f"named output types")
    outputs = tuple(OutputSpec(kind, name, tooltip, bool(is_list))
                    for kind, name, tooltip, is_list in zip(kinds, names, tooltips, lists))
    flags = {schema_field: True for attr, schema_field in SCHEMA_FLAGS.items() if getattr(cls, attr, False)}
    validated = frozenset()
    if hasattr(cls, "VALIDATE_INPUTS"):
        parameters = inspect.signature(cls.VALIDATE_INPUTS).parameters.values()
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        validated = frozenset(i.name for i in inputs if takes_all or i.name in {p.name for p in parameters})
    return NodeSpec(node_id, getattr(cls, "DISPLAY_NAME", None) or node_id, getattr(cls, "CATEGORY", "sd"),
                    getattr(cls, "DESCRIPTION", ""), inputs, outputs, flags, validated)


def _input_spec(node_id: str, name: str, spec: Any, optional: bool) -> InputSpec:
    if not isinstance(spec, (tuple, list)) or not spec or len(spec) > 2:
        raise ValueError(f"node {node_id}: input {name!r} is declared as {spec!r}; expected (type, options) or (type,)")
    kind, options = spec[0], dict(spec[1]) if len(spec) == 2 else {}
    if isinstance(kind, (list, tuple)):  # the V1 combo: a list of entries
        return InputSpec(name, COMBO, optional, options, tuple(kind))
    if kind == COMBO:  # the newer V1 spelling: ("COMBO", {"options": [...]})
        return InputSpec(name, COMBO, optional, options, tuple(options.pop("options", ())))
    if not isinstance(kind, str):
        raise ValueError(f"node {node_id}: input {name!r} has type {kind!r}; expected a type name or a list of entries")
    return InputSpec(name, kind, optional, options)


def v3_arguments(spec: InputSpec, accepted: Collection[str]) -> tuple[dict, dict]:
    """Split the V1 options of ``spec`` into (keywords for its V3 constructor, extra_dict entries).

    ``accepted``: the keywords this server's constructor takes (they differ between ComfyUI versions). A combo's
    entries go in as ``options``."""
    table = KEYWORDS.get(spec.kind, _COMMON)
    keywords, extra = {}, {}
    for key, value in spec.options.items():
        keyword = table.get(key)
        if keyword is not None and keyword in accepted:
            keywords[keyword] = value
        else:
            extra[key] = value
    if spec.kind == COMBO:
        keywords["options"] = list(spec.choices)
    return keywords, extra


def invalid_choices(spec: NodeSpec, values: Mapping[str, Any]) -> list[str]:
    """Messages for the combo values of ``values`` that are not among their input's current choices (inputs the
    node validates itself excepted).

    ComfyUI checks V1 combos before a run; some V3 servers (0.3.64) do not check V3 combos, so `v3_node` does."""
    problems = []
    for item in spec.inputs:
        if (item.kind == COMBO and item.name not in spec.validated and item.name in values
                and values[item.name] not in item.choices):
            shown = ", ".join(map(repr, item.choices[:12])) + (" ..." if len(item.choices) > 12 else "")
            problems.append(f"{item.name} = {values[item.name]!r} is not one of its choices ({shown or 'none'}); "
                            f"pick one on the node {spec.display_name}")
    return problems


# ------------------------------------------------------------------------------------------------ V3 classes
def v3_node(io: Any, v1_class: type, node_id: str | None = None) -> type:
    """The ``io.ComfyNode`` subclass for ``v1_class``, built with the server's ``comfy_api.latest.io``."""
    node_id = node_id or v1_class.__name__
    describe(v1_class, node_id)  # refuse what cannot be carried now, at load time, not at the first run

    def define_schema(cls):
        return v3_schema(io, describe(v1_class, node_id))

    def execute(cls, **inputs):
        problems = invalid_choices(describe(v1_class, node_id), inputs)
        if problems:
            raise ValueError("; ".join(problems))
        result = getattr(v1_class(), v1_class.FUNCTION)(**inputs)
        return io.NodeOutput(*result) if isinstance(result, tuple) else result

    body = {"__module__": v1_class.__module__, "__qualname__": node_id, "__doc__": v1_class.__doc__,
            "V1_CLASS": v1_class, "define_schema": classmethod(define_schema), "execute": classmethod(execute)}
    body.update({v3_name: _forward(v1_class, v1_name) for v1_name, v3_name in FORWARDED.items()
                 if hasattr(v1_class, v1_name)})
    return type(node_id, (io.ComfyNode,), body)


def _forward(v1_class: type, name: str) -> classmethod:
    """A V3 classmethod calling ``v1_class.<name>``, with its signature (plus ``cls``) for ComfyUI to read."""
    target = getattr(v1_class, name)

    def forward(cls, *args, **kwargs):
        return target(*args, **kwargs)

    signature = inspect.signature(target)
    forward.__signature__ = signature.replace(parameters=[
        inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD), *signature.parameters.values()])
    forward.__name__ = forward.__qualname__ = FORWARDED[name]
    return classmethod(forward)


def v3_schema(io: Any, spec: NodeSpec):
    """The ``io.Schema`` of a described node."""
    outputs = [_comfy_type(io, out.kind).Output(id=output_id, display_name=out.name, tooltip=out.tooltip,
                                                is_output_list=out.is_list)
               for out, output_id in zip(spec.outputs, output_ids(spec))]
    return io.Schema(node_id=spec.node_id, display_name=spec.display_name, category=spec.category,
                     description=spec.description, inputs=[_v3_input(io, item) for item in spec.inputs],
                     outputs=outputs, **spec.flags)


def output_ids(spec: NodeSpec) -> list[str]:
    """The V3 ids of the outputs: their names, made unique among the inputs and outputs (ComfyUI 0.3.64 refuses an
    output id equal to an input id, such as Imagen Super-Resolution's ``image``). Only the display name (the V1
    name) reaches /object_info and saved workflows, which link outputs by position."""
    taken, ids = {item.name for item in spec.inputs}, []
    for index, out in enumerate(spec.outputs):
        output_id = out.name if out.name not in taken else f"{out.name}_output{index}"
        taken.add(output_id)
        ids.append(output_id)
    return ids


def _v3_input(io: Any, spec: InputSpec):
    comfy_type = _comfy_type(io, spec.kind)
    keywords, extra = v3_arguments(spec, inspect.signature(comfy_type.Input).parameters)
    if "display_mode" in keywords:
        try:
            keywords["display_mode"] = io.NumberDisplay(keywords["display_mode"])
        except ValueError:  # a display this server's enum lacks: passed on as declared
            extra["display"] = keywords.pop("display_mode")
    made = comfy_type.Input(spec.name, optional=spec.optional, **keywords)
    made.extra_dict.update(extra)
    return made


_custom_types: dict[str, type] = {}


def _comfy_type(io: Any, kind: str) -> type:
    """The server's class for a type name: io.Int ... for widgets, its own class for a type it knows (io.Image,
    io.Mask ...), else one ``io.Custom(kind)`` per name (IMAGEN_MODEL ...)."""
    if kind in WIDGET_TYPES:
        return getattr(io, WIDGET_TYPES[kind])
    for value in vars(io).values():
        if isinstance(value, type) and getattr(value, "io_type", None) == kind and hasattr(value, "Output"):
            return value
    if kind not in _custom_types:
        _custom_types[kind] = io.Custom(kind)
    return _custom_types[kind]


def comfy_entrypoint():
    """ComfyUI's V3 entry: the pack's extension, listing the V3 node of every node in ``nodes.NODE_CLASS_MAPPINGS``.

    ComfyUI's loader calls it when the pack exports no ``NODE_CLASS_MAPPINGS`` (see the top-level ``__init__.py``)."""
    api = cc.v3_api()
    if api is None:
        raise RuntimeError("comfy_entrypoint needs ComfyUI's V3 node API (comfy_api.latest with io.ComfyNode and "
                           "ComfyExtension); this ComfyUI has none: load the V1 NODE_CLASS_MAPPINGS of nodes/")
    io, extension = api
    from . import NODE_CLASS_MAPPINGS

    node_list = [v3_node(io, cls, node_id) for node_id, cls in NODE_CLASS_MAPPINGS.items()]

    class ImagenExtension(extension):
        async def get_node_list(self) -> list:
            return list(node_list)

    return ImagenExtension()
