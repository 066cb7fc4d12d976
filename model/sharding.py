"""Sharding: logical axis names -> mesh axes, one rules table per strategy, and the mesh itself.

Parameters carry logical axis names (``LOGICAL_AXES``; scanned block parameters get
'layers' in front); activations use 'batch', 'length', 'act_embed' (the residual stream's width),
'heads', 'kv_heads', 'head_dim', 'mlp', 'vocab'. A strategy is a rules table that maps every logical
name to mesh axes ('data', 'fsdp', 'sequence', 'tensor') plus a mesh shape; no model code changes.

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))       # 8 devices
    rules = get_rules("fsdp_tp")
    with use_mesh(mesh, rules):
        params = init_params(model, jax.random.key(0), tokens, mesh, rules)   # born sharded
        opt_state = init_opt_state(optax.adamw(1e-3), params, mesh, rules)    # moments shard like params

Parameters' 'embed' and activations' 'act_embed' are two names on purpose: FSDP shards the weights
along the model width over 'fsdp' while the batch of activations is split over 'fsdp' too, and one
array may not use a mesh axis twice.

Every mistake raises one ValueError before anything compiles: a logical name mapped twice or not at
all, two dimensions of one array on the same mesh axis, a parameter without logical axes, a mesh whose
size is not the device count, a mesh axis that does not divide the dimension it shards, a mesh axis
of size > 1 that the rules never use (its devices would all do the same work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from model.config_base import ConfigBase

# Outermost to innermost: the innermost axes get the closest devices (tensor parallelism communicates
# in every layer, sequence parallelism in every attention, FSDP once per layer, data once per step).
MESH_AXES: tuple[str, ...] = ("data", "fsdp", "sequence", "tensor")

PARAM_NAMES = ("embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers")
ACTIVATION_NAMES = ("batch", "length", "act_embed")
LOGICAL_NAMES: tuple[str, ...] = ACTIVATION_NAMES + PARAM_NAMES

# Logical axes of every parameter, by the name model/layers.py and model/transformer.py give it
# (scanned models put 'layers' in front of block parameters).
LOGICAL_AXES: dict[str, tuple[str | None, ...]] = {
    "query": ("embed", "heads", "head_dim"),
    "key": ("embed", "kv_heads", "head_dim"),
    "value_down": ("embed", "kv_heads", "head_dim"),
    "value": ("embed", "kv_heads", None),  # the full-rank D x D value map per head
    "value_up": ("heads", "head_dim", "embed"),
    "query_bias": ("heads", "head_dim"),
    "key_bias": ("kv_heads", "head_dim"),
    "value_down_bias": ("kv_heads", "head_dim"),
    "value_bias": ("kv_heads", None),
    "value_up_bias": ("embed",),
    "fc_in": ("embed", "mlp"),
    "fc_in_bias": ("mlp",),
    "fc_out": ("mlp", "embed"),
    "fc_out_bias": ("embed",),
    "scale": ("embed",),  # LayerNorm / RMSNorm
    "bias": ("embed",),
    "embedding": ("vocab", "embed"),
    "pos_embed": (None, "embed"),
    "unembed": ("embed", "vocab"),
}

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]


# ---------------------------------------------------------------------------- the rules tables
def _table(**mapping: MeshAxes) -> Rules:
    """A full table: every logical name not given is replicated (None)."""
    return tuple((name, mapping.get(name)) for name in LOGICAL_NAMES)


RULES: dict[str, Rules] = {
    # data parallel: the batch is split, every device holds every parameter
    "dp": _table(batch="data"),
    # fully sharded data parallel (ZeRO-3): the batch is split over data x fsdp; every parameter (and
    # so every optimizer moment) is split along the model width over 'fsdp' and gathered per layer
    "fsdp": _table(batch=("data", "fsdp"), embed="fsdp"),
    # tensor parallel (Megatron): heads and MLP columns split over 'tensor'; value_up and fc_out are
    # split by rows, so their contraction over heads / mlp is a partial sum that XLA all-reduces;
    # the vocabulary of the (tied) embedding is split too
    "tp": _table(batch="data", heads="tensor", kv_heads="tensor", mlp="tensor", vocab="tensor"),
    # sequence parallel: the length of every activation is split over 'sequence'; attention is
    # ring attention (ModelConfig.attention_impl='ring'); parameters are replicated
    "sp": _table(batch="data", length="sequence"),
    # the mixes: FSDP inside data parallelism, with tensor or sequence parallelism
    "fsdp_tp": _table(
        batch=("data", "fsdp"), embed="fsdp", heads="tensor", kv_heads="tensor", mlp="tensor", vocab="tensor"
    ),
    "fsdp_sp": _table(batch=("data", "fsdp"), length="sequence", embed="fsdp"),
}


def get_rules(strategy: str) -> Rules:
    """The rules table of a named strategy: 'dp', 'fsdp', 'tp', 'sp', 'fsdp_tp', 'fsdp_sp'."""
    if strategy not in RULES:
        raise ValueError(f"unknown sharding strategy {strategy!r}; choose one of {sorted(RULES)}")
    return RULES[strategy]


def _as_axes(value: MeshAxes) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def validate_rules(rules: Sequence[tuple[str, MeshAxes]]) -> dict[str, tuple[str, ...]]:
    """Check a rules table and return it as ``{logical name: mesh axes}``.

    Raises ValueError on a logical name mapped twice, an unknown or missing logical name, an unknown
    mesh axis, or one mesh axis repeated within an entry.
    """
    table: dict[str, tuple[str, ...]] = {}
    for entry in rules:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(f"sharding rule {entry!r}: expected a pair (logical_name, mesh_axes)")
        name, value = entry
        axes = _as_axes(value)
        if name not in LOGICAL_NAMES:
            raise ValueError(f"sharding rules: unknown logical axis {name!r}; known names are {LOGICAL_NAMES}")
        if name in table:
            raise ValueError(
                f"sharding rules map logical axis {name!r} twice ({table[name]} and {axes}): keep one entry"
            )
        for ax in axes:
            if ax not in MESH_AXES:
                raise ValueError(f"sharding rule for {name!r}: unknown mesh axis {ax!r}; mesh axes are {MESH_AXES}")
        if len(set(axes)) != len(axes):
            raise ValueError(f"sharding rule for {name!r} repeats a mesh axis: {axes}")
        table[name] = axes
    missing = [n for n in LOGICAL_NAMES if n not in table]
    if missing:
        raise ValueError(
            f"sharding rules give no mesh axes for logical axis {missing[0]!r}: add ({missing[0]!r}, None) "
            f"to replicate it"
        )
    return table


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules, *, what: str = "array") -> P:
    """The PartitionSpec of an array whose dimensions have ``logical_axes`` (None = replicated).

    Raises ValueError naming ``what`` when a logical name has no rule or when two dimensions would be
    split over the same mesh axis.
    """
    table = validate_rules(rules)
    entries: list[Any] = []
    used: dict[str, str] = {}
    for name in logical_axes:
        if name is None:
            entries.append(None)
            continue
        if name not in table:
            raise ValueError(
                f"{what}: logical axis {name!r} has no sharding rule; known logical names are {LOGICAL_NAMES}"
            )
        axes = table[name]
        for ax in axes:
            if ax in used:
                raise ValueError(
                    f"{what}: logical axes {used[ax]!r} and {name!r} both map to mesh axis {ax!r}; "
                    f"an array can be split over a mesh axis only once: change the rules"
                )
            used[ax] = name
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*entries)


# ---------------------------------------------------------------------------- the mesh
@dataclasses.dataclass(frozen=True)
class MeshConfig(ConfigBase):
    """Devices per mesh axis; -1 (at most one axis) means "all the devices the others leave".

    replace/to_dict/from_dict come from ConfigBase; the checks below are its own (a size is an int >= 1 or -1).
    """

    data: int = -1  # data parallelism: replicas that each see a slice of the batch
    fsdp: int = 1  # fully sharded data parallelism: parameters and optimizer state split too
    sequence: int = 1  # sequence parallelism: the length split (ring attention)
    tensor: int = 1  # tensor parallelism: heads and MLP columns split

    def __post_init__(self):
        for ax in MESH_AXES:
            size = getattr(self, ax)
            if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
                raise ValueError(f"MeshConfig.{ax}={size!r}: must be a positive int, or -1 for the remaining devices")
        rest = [ax for ax in MESH_AXES if getattr(self, ax) == -1]
        if len(rest) > 1:
            raise ValueError(f"MeshConfig: only one axis may be -1, got {rest}; give the others explicit sizes")

    def sizes(self, n_devices: int) -> dict[str, int]:
        """Axis sizes for ``n_devices`` devices, -1 resolved; ValueError if they do not multiply to it."""
        fixed = math.prod(getattr(self, ax) for ax in MESH_AXES if getattr(self, ax) != -1)
        sizes = {ax: getattr(self, ax) for ax in MESH_AXES}
        rest = [ax for ax in MESH_AXES if sizes[ax] == -1]
        if rest:
            if n_devices % fixed:
                raise ValueError(
                    f"MeshConfig {self._show()}: the fixed axes use {fixed} devices, which does not divide the "
                    f"{n_devices} devices available; choose sizes whose product divides {n_devices}"
                )
            sizes[rest[0]] = n_devices // fixed
        elif fixed != n_devices:
            raise ValueError(
                f"MeshConfig {self._show()}: the axis sizes multiply to {fixed} but there are {n_devices} devices; "
                f"make the product {n_devices} (or set one axis to -1)"
            )
        return sizes

    def _show(self) -> str:
        return "(" + ", ".join(f"{ax}={getattr(self, ax)}" for ax in MESH_AXES) + ")"


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes ('data', 'fsdp', 'sequence', 'tensor') sized by ``mesh_cfg`` over ``devices``.

    ``devices`` defaults to ``jax.devices()`` (every device of every process, so the same call builds the
    global mesh on each host of a multi-host run). Axes of size 1 are kept so that every rules table
    applies to every mesh. The axes are of type Auto: the compiler propagates shardings between the
    ones given by the rules.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_cfg.sizes(len(devices))
    shape = tuple(sizes[ax] for ax in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices)


def _mesh_sizes(mesh: Mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))


def check_mesh(mesh: Mesh, rules: Rules) -> None:
    """Every mesh axis the rules use exists; no mesh axis of size > 1 goes unused by the rules."""
    table = validate_rules(rules)
    sizes = _mesh_sizes(mesh)
    used = {ax for axes in table.values() for ax in axes}
    for ax in sorted(used):
        if ax not in sizes:
            raise ValueError(f"the sharding rules use mesh axis {ax!r}, which the mesh (axes {tuple(sizes)}) lacks")
    idle = [ax for ax, n in sizes.items() if n > 1 and ax not in used]
    if idle:
        raise ValueError(
            f"mesh axis {idle[0]!r} has {sizes[idle[0]]} devices but the sharding rules map no logical axis to it, "
            f"so they would all do the same work: give it size 1 or choose rules that use it"
        )


# ---------------------------------------------------------------------------- parameters
def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_logical_axes(params_or_shapes, scanned: bool | None = None):
    """The logical axis names of every parameter: a pytree of tuples, one name (or None) per dimension.

    Names come from ``LOGICAL_AXES`` by parameter name; parameters under 'blocks' (the
    scanned stack) get 'layers' in front. ``scanned`` None infers it from the presence of 'blocks'.
    Raises ValueError for a parameter without an entry or whose rank does not match its names.
    """
    if scanned is None:
        scanned = isinstance(params_or_shapes, Mapping) and "blocks" in params_or_shapes

    def axes_of(path, leaf):
        name = _path_str(path)
        last = getattr(path[-1], "key", None) if path else None
        if last not in LOGICAL_AXES:
            raise ValueError(f"parameter {name!r} has no logical axes: add {last!r} to model.sharding.LOGICAL_AXES")
        axes = tuple(LOGICAL_AXES[last])
        if scanned and getattr(path[0], "key", None) == "blocks":
            axes = ("layers",) + axes
        if len(axes) != len(np.shape(leaf)):
            raise ValueError(
                f"parameter {name!r} has shape {tuple(np.shape(leaf))} but logical axes {axes}: "
                f"is scanned={scanned} right for this model (ModelConfig.scan_layers)?"
            )
        return axes

    return jax.tree_util.tree_map_with_path(axes_of, params_or_shapes)


def param_partition_specs(params_or_shapes, rules: Rules, scanned: bool | None = None):
    """A pytree of PartitionSpec, one per parameter, from the logical axes and ``rules``.

    ``params_or_shapes``: the params dict (arrays or ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``).
    """
    logical = param_logical_axes(params_or_shapes, scanned)
    paths = _paths(params_or_shapes)
    return jax.tree.map(
        lambda axes, path: logical_to_spec(axes, rules, what=f"parameter {path!r}"),
        logical,
        paths,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _paths(tree):
    return jax.tree_util.tree_map_with_path(lambda path, _: _path_str(path), tree)


def check_divisible(mesh: Mesh, specs, shapes, *, what: str = "parameter") -> None:
    """ValueError naming the array, dimension and mesh axis where the mesh does not divide a dimension."""
    sizes = _mesh_sizes(mesh)
    paths = _paths(shapes)

    def check(spec: P, shape, path):
        shape = tuple(np.shape(shape))
        name = f"{what} {path!r}" if path else what
        for dim, entry in enumerate(tuple(spec)):
            axes = _as_axes(entry)
            for ax in axes:
                if ax not in sizes:
                    raise ValueError(f"{name}: mesh axis {ax!r} is not in the mesh (axes {tuple(sizes)})")
            n = math.prod(sizes[ax] for ax in axes)
            if n > 1 and shape[dim] % n:
                raise ValueError(
                    f"{name} dimension {dim} (size {shape[dim]}) is not divisible by mesh axis "
                    f"{entry!r} of size {n}: choose a mesh whose {entry!r} size divides {shape[dim]}, "
                    f"or change the model size or the rules"
                )

    jax.tree.map(check, specs, shapes, paths, is_leaf=lambda x: isinstance(x, P))


def named_shardings(mesh: Mesh, specs, shapes=None, *, what: str = "parameter"):
    """NamedSharding for every PartitionSpec of ``specs``; checks divisibility first when ``shapes`` is given."""
    if shapes is not None:
        check_divisible(mesh, specs, shapes, what=what)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def param_shardings(mesh: Mesh, params_or_shapes, rules: Rules, scanned: bool | None = None):
    """NamedSharding per parameter under ``rules`` on ``mesh``, checked (mesh use, divisibility)."""
    check_mesh(mesh, rules)
    specs = param_partition_specs(params_or_shapes, rules, scanned)
    return named_shardings(mesh, specs, params_or_shapes)


def state_shardings(mesh: Mesh, state_shapes, params_shapes, rules: Rules):
    """Shardings for any state pytree holding parameter-shaped trees (an optax state, a train state).

    Every subtree with the structure and shapes of ``params_shapes`` (Adam's mu and nu, the params
    themselves, an EMA of them) is sharded like the parameters; every other leaf (step counts,
    factored statistics of other shapes) is replicated.
    """
    p_shardings = param_shardings(mesh, params_shapes, rules)
    p_def = jax.tree.structure(params_shapes)
    p_shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(params_shapes)]

    def like_params(x) -> bool:
        if jax.tree.structure(x) != p_def:
            return False
        return [tuple(np.shape(y)) for y in jax.tree.leaves(x)] == p_shapes

    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: p_shardings if like_params(x) else replicated, state_shapes, is_leaf=like_params)


# ---------------------------------------------------------------------------- sharded initialisation
def init_params(model, rng: jax.Array, tokens, mesh: Mesh, rules: Rules):
    """``model.init(rng, tokens)['params']`` created directly in its sharded layout.

    Shapes come from ``jax.eval_shape`` (nothing allocated); the init is then compiled with those
    out-shardings, so no device ever holds the whole model. ``tokens`` may be a ShapeDtypeStruct.
    """
    tokens = jax.ShapeDtypeStruct(np.shape(tokens), getattr(tokens, "dtype", np.int32))

    def init(rng):
        return model.init(rng, jax.numpy.zeros(tokens.shape, tokens.dtype))["params"]

    with use_mesh(mesh, rules):
        shapes = jax.eval_shape(init, rng)
        shardings = param_shardings(mesh, shapes, rules)
        return jax.jit(init, out_shardings=shardings)(rng)


def init_opt_state(optimizer, params, mesh: Mesh, rules: Rules):
    """``optimizer.init(params)`` with every moment sharded like its parameter (see state_shardings)."""
    params_shapes = jax.eval_shape(lambda p: p, params)
    shapes = jax.eval_shape(optimizer.init, params_shapes)
    return jax.jit(optimizer.init, out_shardings=state_shardings(mesh, shapes, params_shapes, rules))(params)


# ---------------------------------------------------------------------------- batches and activations
def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """The sharding of a batch array ``[B, T, ...]``: B by the 'batch' rule, T by the 'length' rule."""
    check_mesh(mesh, rules)
    logical = ("batch", "length", *([None] * (ndim - 2)))[:ndim]
    return NamedSharding(mesh, logical_to_spec(logical, rules, what="batch"))


_RULES_STACK: list[tuple[Mesh, Rules]] = []


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules | None = None) -> Iterator[Mesh]:
    """Make ``mesh`` the current mesh (``jax.set_mesh``) and ``rules`` the ones for activation constraints.

    Ring attention finds its mesh here; :func:`with_logical_constraint` finds the rules. Functions
    should be traced (first called under jit) inside the context.
    """
    if rules is not None:
        validate_rules(rules)
    with jax.set_mesh(mesh):
        _RULES_STACK.append((mesh, rules))
        try:
            yield mesh
        finally:
            _RULES_STACK.pop()


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by its logical axes; a no-op outside ``use_mesh(mesh, rules)``."""
    if not _RULES_STACK or _RULES_STACK[-1][1] is None:
        return x
    mesh, rules = _RULES_STACK[-1]
    spec = logical_to_spec(logical_axes, rules, what=f"activation {tuple(logical_axes)}")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# ---------------------------------------------------------------------------- memory
def bytes_per_device(*trees) -> dict[str, Any]:
    """Bytes of the arrays in ``trees`` in total and on each device (from each array's addressable shards).

    Returns {'total': bytes of the global arrays, 'per_device': {device id: bytes}, 'max_per_device',
    'fraction': max_per_device / total}. FSDP over n devices should give a fraction near 1/n.
    """
    total = 0
    per_device: dict[int, int] = {}
    for leaf in jax.tree.leaves(trees):
        total += leaf.nbytes
        for shard in leaf.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    most = max(per_device.values()) if per_device else 0
    return {"total": total, "per_device": per_device, "max_per_device": most, "fraction": most / max(total, 1)}
