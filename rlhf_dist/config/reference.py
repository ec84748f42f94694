"""The config reference, docs/config.md, generated from the config models so that the page cannot drift from
the code: `python -m rlhf_dist.config.reference docs/config.md` (or `make docs`) writes it; without a path it
prints it. tests/test_docs.py fails when the page is stale or a field has no description."""
from __future__ import annotations

import inspect
import json
import sys
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rlhf_dist.config.collect import CandidatesConfig
from rlhf_dist.config.common import PathKind, ResumableJob
from rlhf_dist.config.rl import Config
from rlhf_dist.config.stages import STAGES

REGENERATE = "make docs (python -m rlhf_dist.config.reference docs/config.md)"

# (command, root model): the configs a user writes. Commands whose models have the same fields share a section.
ROOTS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("train", Config),
    *STAGES.items(),
    ("collect candidates", CandidatesConfig),
)
# Other commands and files that read a root's config.
ALSO = {"train": "`rlhf-dist eval`, `plan`, `bench` and the pipeline's `ppo.yaml`", "sft": "the pipeline's `sft.yaml`",
        "rm": "the pipeline's `rm.yaml`", "collect candidates": "`collect start`'s `candidates.yaml`"}
# Sections every job shares: listed after a root's own sections, which say more about the command.
SHARED = set(ResumableJob.model_fields)
BOUNDS = {annotated_types.Ge: ("ge", ">="), annotated_types.Gt: ("gt", ">"), annotated_types.Le: ("le", "<="),
          annotated_types.Lt: ("lt", "<")}
PATH_KINDS = {"file": "path of a readable file", "output_dir": "path of a directory to write"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped but hyphens and underscores, spaces to hyphens."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ")
    return kept.replace(" ", "-")


def ordered_fields(model: type[BaseModel]) -> list[str]:
    names = list(model.model_fields)
    return [n for n in names if n not in SHARED] + [n for n in names if n in SHARED]


def nested_models(annotation, path: str) -> list[tuple[type[BaseModel], str]]:
    """(model, dotted path) for every model class inside a field's annotation: lists add [], maps .<name>."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, path)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple):
        return [m for a in args for m in nested_models(a, f"{path}[]")]
    if origin is dict:
        return nested_models(args[1], f"{path}.<name>")
    return [m for a in args for m in nested_models(a, path)]


def walk(model: type[BaseModel], prefix: str = ""):
    """Depth first, in field order: (model, dotted path) for every model below `model`."""
    for name in ordered_fields(model):
        for sub, path in nested_models(model.model_fields[name].annotation, prefix + name):
            yield sub, path
            yield from walk(sub, path + ".")


def models() -> list[type[BaseModel]]:
    """Every model a config can hold, roots first, each once."""
    out: list[type[BaseModel]] = []
    for _, root in ROOTS:
        for m in [root, *(m for m, _ in walk(root))]:
            if m not in out:
                out.append(m)
    return out


def type_text(annotation, metadata=()) -> str:
    kinds = [m.kind for m in metadata if isinstance(m, PathKind)]
    if kinds:
        return PATH_KINDS[kinds[0]]
    if annotation is type(None):
        return "none"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{slug(annotation.__name__)})"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value_text(a)}`" for a in args)
    if origin is typing.Annotated:
        return type_text(args[0], annotation.__metadata__)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"map of {type_text(args[0])} to {type_text(args[1])}"
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if args:  # a union
        return " or ".join(type_text(a) for a in args)
    return "any" if annotation is typing.Any else annotation.__name__


def value_text(value) -> str:
    """As YAML would hold it: a plain string bare, one that needs quotes (spaces at an end, newlines) quoted."""
    if isinstance(value, str) and value and value == value.strip() and "\n" not in value:
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def default_text(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        # A section's default is its own defaults, except what the parent sets differently.
        changed = [f"`{n}: {value_text(getattr(value, n))}`" for n, f in type(value).model_fields.items()
                   if f.default is not PydanticUndefined and getattr(value, n) != f.default]
        return "its defaults" + (", but " + ", ".join(changed) if changed else "")
    return f"`{value_text(value)}`"


def constraint_text(field) -> str:
    bounds = [(BOUNDS[type(m)], m) for m in field.metadata if type(m) in BOUNDS]
    return ", ".join(f"{sign} {getattr(m, attr)}" for (attr, sign), m in bounds)


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table(model: type[BaseModel]) -> list[str]:
    rows = ["| field | type | default | constraints | description |", "|---|---|---|---|---|"]
    for name in ordered_fields(model):
        f = model.model_fields[name]
        rows.append(f"| `{name}` | {type_text(f.annotation, f.metadata)} | {default_text(f)} | "
                    f"{constraint_text(f)} | {cell(f.description or '')} |")
    return rows


def doc_of(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _same_fields(a: type[BaseModel], b: type[BaseModel]) -> bool:
    fa, fb = a.model_fields, b.model_fields
    return fa.keys() == fb.keys() and all(fa[n].annotation == fb[n].annotation for n in fa)


def reference() -> str:
    """The markdown of docs/config.md."""
    roots: list[tuple[list[str], list[str], type[BaseModel]]] = []  # commands, class names, the first class
    for command, root in ROOTS:
        same = next((r for r in roots if _same_fields(r[2], root)), None)
        if same:
            same[0].append(command)
            same[1].append(root.__name__)
        else:
            roots.append(([command], [root.__name__], root))
    paths: dict[type[BaseModel], list[str]] = {}
    for _, root in ROOTS:
        for m, path in walk(root):
            label = f"`{path}`"
            paths.setdefault(m, [])
            if label not in paths[m]:
                paths[m].append(label)

    out = ["# Config reference", "",
           "Generated from the config models (`rlhf_dist/config/`) by `make docs`",
           "(`python -m rlhf_dist.config.reference docs/config.md`); do not edit it by hand.",
           "Every config is validated before anything starts: unknown keys, wrong types, values outside the bounds",
           "below and NaN or infinity in any float are refused with one message naming the field, exit code 2.",
           "Any field can be set on the command line as a dotted override (`ppo.kl_coef=0.05`).", ""]
    done: set[type[BaseModel]] = set()
    for commands, classes, root in roots:
        also = " and ".join(ALSO[c] for c in commands if c in ALSO)
        out += [f"## {', '.join(f'`rlhf-dist {c}`' for c in commands)}", "",
                f"The top level of the config file ({', '.join(classes)}" + (f"; also {also})." if also else ")."), ""]
        out += table(root) + [""]
        done.add(root)
        for m, _ in walk(root):
            if m in done:
                continue
            done.add(m)
            out += [f"### {m.__name__}", "", f"At {', '.join(paths[m])}.", ""]
            if doc_of(m):
                out += [doc_of(m), ""]
            out += table(m) + [""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = reference()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
