"""Spec -> step graph: names, groups, dependencies; unknown references and cycles found here.

Pure: no templates are rendered and nothing is run. The graph is the shape of a workflow
whatever its parameters; `plan` decides what of it runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field

from flows.errors import ValidationError
from flows.workflow.load import LoadedWorkflow, Location
from flows.workflow.spec import Retry, Step

HOOK_SECTIONS = ("on_failure", "on_retry", "on_success", "compensate", "fallback_steps")


@dataclass
class Node:
    """A step in the graph; groups have children, commands and scripts are leaves."""

    id: str
    step: Step
    loc: Location
    parent: str | None
    order: int
    children: list[str] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)

    @property
    def is_group(self) -> bool:
        return self.step.is_group


@dataclass(frozen=True)
class Hook:
    """A step that runs in a fixed sequence (hooks, rollback, post_execution), not in the DAG."""

    id: str
    step: Step
    loc: Location


@dataclass
class Graph:
    nodes: dict[str, Node]
    roots: list[str]
    sections: dict[str, list[Hook]]

    @property
    def leaves(self) -> list[str]:
        return [n.id for n in self.nodes.values() if not n.is_group]

    def ancestors(self, node_id: str) -> list[str]:
        """Parent first, root last."""
        chain, parent = [], self.nodes[node_id].parent
        while parent is not None:
            chain.append(parent)
            parent = self.nodes[parent].parent
        return chain

    def leaves_under(self, node_id: str) -> list[str]:
        node = self.nodes[node_id]
        if not node.is_group:
            return [node_id]
        return [leaf for child in node.children for leaf in self.leaves_under(child)]

    def waits_for(self, leaf_id: str) -> set[str]:
        """Every node that must be finished before this leaf may start."""
        deps = set(self.nodes[leaf_id].deps)
        for ancestor in self.ancestors(leaf_id):
            deps.update(self.nodes[ancestor].deps)
        return deps

    def inherited(self, node_id: str, attribute: str) -> object:
        """The step's own value of `attribute`, else the nearest group's."""
        for candidate in (node_id, *self.ancestors(node_id)):
            value = getattr(self.nodes[candidate].step, attribute)
            if value is not None:
                return value
        return None

    def retry_of(self, node_id: str, default: Retry | None) -> Retry | None:
        found = self.inherited(node_id, "retry")
        return found if isinstance(found, Retry) else default

    def group_limit(self, group_id: str) -> int | None:
        """How many leaves under this group may run at once (None: no limit of its own)."""
        step = self.nodes[group_id].step
        # A sequential group needs no limit of its own: each child already waits for the one
        # before it, and a limit would also serialise a parallel group nested inside it.
        return step.parallel_limit

    def hooks(self) -> Iterator[Hook]:
        for hooks in self.sections.values():
            yield from hooks
        for node in self.nodes.values():
            for hooks in node.hooks.values():
                yield from hooks


def build_graph(loaded: LoadedWorkflow) -> Graph:
    """Name every step, wire implicit and explicit dependencies, refuse bad references and cycles."""
    spec = loaded.spec
    nodes: dict[str, Node] = {}
    roots = _add_steps(loaded, spec.steps, ("steps",), None, nodes, sequential=True)
    sections = {
        "on_success": _hooks(loaded, spec.on_success, ("on_success",), "on_success"),
        "on_failure": _hooks(loaded, spec.on_failure, ("on_failure",), "on_failure"),
        "rollback": _hooks(
            loaded, spec.rollback.steps if spec.rollback else [], ("rollback", "steps"), "rollback"
        ),
        "post_success": _hooks(
            loaded,
            spec.post_execution.success if spec.post_execution else [],
            ("post_execution", "success"),
            "post_execution.success",
        ),
        "post_failure": _hooks(
            loaded,
            spec.post_execution.failure if spec.post_execution else [],
            ("post_execution", "failure"),
            "post_execution.failure",
        ),
        "recovery": _hooks(
            loaded, spec.recovery.steps if spec.recovery else [], ("recovery", "steps"), "recovery"
        ),
    }
    graph = Graph(nodes=nodes, roots=roots, sections=sections)
    _resolve_dependencies(loaded, graph)
    _refuse_cycles(loaded, graph)
    return graph


def _add_steps(
    loaded: LoadedWorkflow,
    steps: list[Step],
    loc: Location,
    parent: str | None,
    nodes: dict[str, Node],
    *,
    sequential: bool,
) -> list[str]:
    ids: list[str] = []
    for index, step in enumerate(steps):
        here = (*loc, index)
        node_id = step.name or (f"{parent}.{index + 1}" if parent else f"step{index + 1}")
        if node_id in nodes:
            first = loaded.where(nodes[node_id].loc)
            raise ValidationError(
                f"step name `{node_id}` is used twice (first at {first}) — names must be unique",
                where=loaded.where(here),
            )
        node = Node(id=node_id, step=step, loc=here, parent=parent, order=len(nodes))
        nodes[node_id] = node
        if sequential and ids:
            node.deps.append(ids[-1])
        node.hooks = {
            section: _hooks(loaded, getattr(step, section), (*here, section), f"{node_id}.{section}")
            for section in HOOK_SECTIONS
            if getattr(step, section)
        }
        if step.is_group:
            concurrent = step.parallel or step.parallel_limit is not None
            node.children = _add_steps(
                loaded, step.children, (*here, "steps"), node_id, nodes, sequential=not concurrent
            )
        ids.append(node_id)
    return ids


def _hooks(loaded: LoadedWorkflow, steps: list[Step], loc: Location, prefix: str) -> list[Hook]:
    """Hook steps run one after another; groups inside them are flattened in order."""
    hooks: list[Hook] = []
    for index, step in enumerate(steps):
        here = (*loc, index)
        if step.depends_on:
            raise ValidationError(
                f"`depends_on` has no effect in `{prefix.rsplit('.', 1)[-1]}` steps: they run in the order written",
                where=loaded.where((*here, "depends_on")),
            )
        name = step.name or f"{prefix}.{index + 1}"
        if step.is_group:
            hooks.extend(_hooks(loaded, step.children, (*here, "steps"), name))
        else:
            hooks.append(Hook(id=name, step=step, loc=here))
    return hooks


def _resolve_dependencies(loaded: LoadedWorkflow, graph: Graph) -> None:
    for node in graph.nodes.values():
        for index, dep in enumerate(node.step.depends_on):
            where = loaded.where((*node.loc, "depends_on", index))
            if dep not in graph.nodes:
                hint = difflib.get_close_matches(dep, list(graph.nodes), n=1)
                suggestion = f" — did you mean `{hint[0]}`?" if hint else ""
                raise ValidationError(
                    f"step `{node.id}` depends on `{dep}`, which is not a step{suggestion}", where=where
                )
            if dep == node.id or dep in graph.ancestors(node.id):
                raise ValidationError(
                    f"step `{node.id}` cannot depend on itself or its own group `{dep}`", where=where
                )
            if node.id in graph.ancestors(dep):
                raise ValidationError(
                    f"group `{node.id}` cannot depend on its own child `{dep}`: the group finishes after it anyway",
                    where=where,
                )
            if dep not in node.deps:
                node.deps.append(dep)


def _refuse_cycles(loaded: LoadedWorkflow, graph: Graph) -> None:
    """Depth-first search over leaves; a back edge is a cycle, reported with its path."""
    edges = {
        leaf: sorted({w for d in graph.waits_for(leaf) for w in graph.leaves_under(d)})
        for leaf in graph.leaves
    }
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    for start in graph.leaves:
        if start in state:
            continue
        path: list[str] = [start]
        pending: list[list[str]] = [list(edges[start])]
        state[start] = 1
        while path:  # iterative: a long sequential workflow must not hit the recursion limit
            if not pending[-1]:
                state[path.pop()] = 2
                pending.pop()
                continue
            nxt = pending[-1].pop()
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise ValidationError(
                    f"dependency cycle: {' → '.join(cycle)} — remove one of these `depends_on`",
                    where=loaded.where((*graph.nodes[nxt].loc, "depends_on")),
                )
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                pending.append(list(edges[nxt]))
