"""Raw input → graph: the one path that training (the graph cache) and ``predict`` both take.

A raw input is what the readers (:mod:`sagnn_lightning.data.readers`) hand over: a pymatgen ``Structure``, CIF
text or a ``Structure.as_dict()`` for crystals, or a formula (string, ``Composition``, ``{element: amount}``) for
compositions. The settings say which: :class:`~sagnn_lightning.data.graph.GraphSettings` builds crystal graphs,
:class:`~sagnn_lightning.data.composition.CompositionSettings` element graphs. The same input gives the same
graph in ``fit`` (built into the cache) and in ``predict`` (built on the fly), because both call
:func:`item_to_graph_arrays`.
"""

from __future__ import annotations

import warnings

from pymatgen.core import Structure
from torch_geometric.data import Data

from sagnn_lightning.data.composition import (
    CompositionArrays,
    CompositionLike,
    CompositionSettings,
    composition_arrays_to_data,
    composition_graph_arrays,
)
from sagnn_lightning.data.graph import (
    GraphArrays,
    GraphSettings,
    StructureError,
    arrays_to_data,
    graph_arrays,
    structure_graph_arrays,
    with_cutoff,
)
from sagnn_lightning.data.parsers import describe_cif_problem, parse_simple_cif, parse_simple_dict

#: what a reader hands over for one crystal
StructureLike = Structure | dict | str
#: the graph settings of either kind of input (both are part of the cache key)
AnySettings = GraphSettings | CompositionSettings


def settings_from_dict(values: dict) -> AnySettings:
    """Settings back from their :meth:`as_dict` (as stored in a graph cache header)."""
    values = dict(values)
    if values.pop("kind", "crystal") == "composition":
        return CompositionSettings(**values)
    return GraphSettings(**values)


#: exceptions that mean a bug in this code or a broken installation, not a bad item: never reported per item
PROGRAMMING_ERRORS: tuple[type[Exception], ...] = (NameError, ImportError, NotImplementedError, SyntaxError)


def item_to_graph_arrays(
    item: StructureLike | CompositionLike, settings: AnySettings, name: str = "structure"
) -> GraphArrays | CompositionArrays:
    """Graph arrays of one raw input.

    With :class:`CompositionSettings`: the element graph of a formula
    (:func:`~sagnn_lightning.data.composition.composition_graph_arrays`). Otherwise a crystal graph of a pymatgen
    ``Structure``, CIF text or a ``Structure.as_dict()``: P1 CIFs and ordered dicts go through the fast readers of
    :mod:`~sagnn_lightning.data.parsers` (same numbers as pymatgen), anything else through pymatgen.

    Every failure of this one input is a :class:`StructureError` naming it, so that a caller (the graph cache,
    ``predict``) can report the item and go on with the others: an unexpected exception from pymatgen or numpy
    (``ValueError``, ``IndexError``, ``MemoryError``, ...) is wrapped with its type and first line; only
    :data:`PROGRAMMING_ERRORS` and non-``Exception`` signals (``KeyboardInterrupt``) pass through.

    Raises:
        StructureError: unparsable, empty, disordered or zero-volume input, a species that is no element, a
            cell too large or too dense for its atoms (:func:`~sagnn_lightning.data.graph.neighbor_list_arrays`),
            a bad formula (:class:`~sagnn_lightning.data.composition.CompositionError`), or any other failure of
            this input; the message names ``name``.
    """
    try:
        return _graph_arrays(item, settings, name)
    except StructureError:
        raise
    except PROGRAMMING_ERRORS:
        raise
    except Exception as exc:  # a failure of this one input, whatever raised it: report it against the input
        first = _first_line(exc)
        raise StructureError(
            f"{name}: could not build the graph: {type(exc).__name__}{': ' + first if first else ''}; "
            "fix or remove this entry."
        ) from exc


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message: errors are reported on one line."""
    return next(iter(str(exc).strip().splitlines()), "")


def _graph_arrays(
    item: StructureLike | CompositionLike, settings: AnySettings, name: str
) -> GraphArrays | CompositionArrays:
    """:func:`item_to_graph_arrays` without the wrapping of unexpected exceptions."""
    if isinstance(settings, CompositionSettings):
        return composition_graph_arrays(item, name)  # type: ignore[arg-type]
    if isinstance(item, Structure):
        return structure_graph_arrays(item, settings, name)
    if isinstance(item, (str, dict)):
        simple = parse_simple_cif(item) if isinstance(item, str) else parse_simple_dict(item)
        if simple is not None:
            z, cart, lattice = simple
            return graph_arrays(z, cart, lattice, settings, name=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(item, dict) and not item.get("sites"):
                raise StructureError(f"{name}: structure has no sites; remove this entry.")
            if isinstance(item, dict):
                structure = Structure.from_dict(item)
            elif isinstance(item, str):
                structure = Structure.from_str(item, fmt="cif")
            else:
                raise TypeError(
                    f"expected a pymatgen Structure, a Structure.as_dict() or CIF text, got {type(item).__name__}"
                )
    except StructureError:
        raise
    except Exception as exc:  # any parser failure is a bad entry, reported with its id
        hint, problem = "", None
        if isinstance(item, str) and "\n" not in item.strip():
            hint = "; strings must be CIF text, not file names (read the file first)"
        elif isinstance(item, str):
            problem = describe_cif_problem(item)  # pymatgen's own exception is often internal
        raise StructureError(
            f"{name}: could not parse the structure: {problem or f'{type(exc).__name__}: {_first_line(exc)}'}{hint}"
        ) from exc
    return structure_graph_arrays(structure, settings, name)


def item_to_graph(item: StructureLike | CompositionLike, settings: AnySettings, name: str = "structure") -> Data:
    """:func:`item_to_graph_arrays` as a PyG ``Data`` (the dtypes of
    :func:`~sagnn_lightning.data.graph.structure_to_graph` or
    :func:`~sagnn_lightning.data.composition.composition_to_graph`)."""
    arrays = item_to_graph_arrays(item, settings, name)
    if isinstance(arrays, CompositionArrays) or not isinstance(settings, GraphSettings):
        return composition_arrays_to_data(arrays, settings.state)  # type: ignore[arg-type]
    return with_cutoff(arrays_to_data(arrays, settings.state), settings)
