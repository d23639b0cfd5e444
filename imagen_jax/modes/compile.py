"""mode=compile: will it fit a TPU pod? Ahead-of-time compiles, for a named TPU topology (compile.topology, e.g.
v5p:8x8x4) and on this machine with no TPU, every stage's train step, one guided sampling step of that stage, and
the text encoder, each through the jitted function that training and sampling run (experiment.py's
jit_train_step, sample.py's compiled_generate, text/encoder.py's jit_embed: the same mesh, logical-axis rules
and shardings), and prints one JSON line per stage and program:

    topology, chips, mesh, stage, program (train_step | sample_step | encode_text), batch,
    bytes_per_chip {arguments, outputs, aliased, temporaries, generated_code, total}, hbm_bytes_per_chip, fits,
    flops_per_chip, peak_bf16_flops_per_chip, ideal_seconds (FLOPs at the chip's peak), compile_seconds

total = arguments + outputs - aliased + temporaries + generated code (XLA's memory analysis of the compiled
program for one chip; the donated train state's outputs alias its arguments). XLA's TPU compiler refuses a
program whose temporaries exceed the chip's usable HBM: its row then has fits: false, "refused" (the compiler's
line and the usable HBM it states), the temporaries it states and the arguments' bytes from their shardings.
A program that does not fit gets one line saying by how much and which settings would help, and the run ends
with an error (exit status 2). compile.stage picks one stage of a cascade (stages that train on different
slices), compile.programs some of the three programs. Nothing is allocated, trained or written; the workdir is
not touched.
"""

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from imagen_jax import experiment, parallel, sample, topology
from imagen_jax.errors import UserError
from imagen_jax.models.registry import get_family
from imagen_jax.text import encoder as text_encoder
from imagen_jax.text.t5 import T5Encoder, param_shardings
from imagen_jax.training.checkpoint import abstract_like

GiB = topology.GiB


class DoesNotFitError(UserError):
    """At least one compiled program needs more memory per chip than the chip has."""


@dataclasses.dataclass(frozen=True)
class TextShape:
    """The text encoder as compile mode needs it: the shape of its embeddings, no tokenizer and no weights
    (an experiment that is only compiled never encodes a prompt)."""

    max_length: int
    dim: int
    identity: str = "compile-only"

    def encode(self, prompts: Any) -> Any:
        raise RuntimeError("mode=compile never encodes prompts")


def _memory(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    sizes = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "aliased": int(stats.alias_size_in_bytes),
        "temporaries": int(stats.temp_size_in_bytes),
        "generated_code": int(stats.generated_code_size_in_bytes),
    }
    sizes["total"] = (
        sizes["arguments"]
        + sizes["outputs"]
        - sizes["aliased"]
        + sizes["temporaries"]
        + sizes["generated_code"]
    )
    return sizes


def _flops(stage: Any) -> float:
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", 0.0))


# XLA's TPU compiler refuses a program whose temporaries exceed the chip's usable HBM, e.g. "RESOURCE_EXHAUSTED:
# Ran out of memory on HBM, the total memory required for HLO temporaries (89.37G) exceeds available HBM (15.75G)."
_OUT_OF_MEMORY = re.compile(
    r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"
)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _argument_bytes(args: Any) -> int:
    """Bytes per chip of abstract arguments under their shardings (without the TPU layouts' tile padding)."""
    total = 0
    for leaf in jax.tree.leaves(args):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


def _measure(
    lower: Callable[[], Any], args: tuple, *, chip: topology.Chip, mesh: jax.sharding.Mesh, **fields
) -> dict:
    """One row: lower() (the program for `args`, abstract and sharded) compiled for the topology. A program the
    compiler refuses for lack of HBM is a row too (fits: false): its temporaries as the compiler states them,
    its arguments from their shardings, its FLOPs from the partitioned-but-uncompiled program (per chip: the
    global count over the chips)."""
    start = time.perf_counter()
    lowered = lower()
    chips = int(mesh.devices.size)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as err:
        match = _OUT_OF_MEMORY.search(str(err))
        if match is None:
            raise
        temporaries = int(float(match.group(1)) * _UNITS[match.group(2)])
        usable = int(float(match.group(3)) * _UNITS[match.group(4)])
        arguments = _argument_bytes(args)
        memory = {"arguments": arguments, "temporaries": temporaries, "total": arguments + temporaries}
        flops = _flops(lowered) / chips
        refusal = {"compiler": str(err).strip().splitlines()[0], "usable_hbm_bytes": usable}
    else:
        memory, flops, refusal = _memory(compiled), _flops(compiled), None
        del compiled
    seconds = time.perf_counter() - start
    row = {
        "topology": fields.pop("topology_name"),
        "chips": chips,
        "mesh": {axis: int(size) for axis, size in mesh.shape.items()},
        **fields,
        "bytes_per_chip": memory,
        "hbm_bytes_per_chip": chip.hbm_bytes,
        "fits": refusal is None and memory["total"] <= chip.hbm_bytes,
        "flops_per_chip": flops,
        "peak_bf16_flops_per_chip": chip.peak_bf16_flops,
        "ideal_seconds": flops / chip.peak_bf16_flops,
        "compile_seconds": round(seconds, 1),
    }
    if refusal is not None:
        row["refused"] = refusal
    return row


def _abstract_batch(exp: experiment.Experiment, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = jax.eval_shape(lambda: exp.example_batch(batch_size))
    shardings = exp.batch_shardings()
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in shapes.items()}


def _sample_arguments(exp: experiment.Experiment, batch_size: int) -> tuple[Any, ...]:
    """Abstract (params, text_embeddings, text_mask, rng, lowres or None) for one guided sampling step, placed as
    sampling places them: the EMA parameters as the train state holds them, the host's arrays whole on every
    device (the activations are then split along the batch by the rules)."""
    whole = parallel.replicated(exp.mesh)
    params = abstract_like(exp.state_shapes.ema_params, exp.state_shardings.ema_params)
    length, width = exp.text_encoder.max_length, exp.text_encoder.dim
    text = jax.ShapeDtypeStruct((batch_size, length, width), jnp.float32, sharding=whole)
    mask = jax.ShapeDtypeStruct((batch_size, length), jnp.bool_, sharding=whole)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=whole)
    lowres = None
    stage = exp.family.train_stage if exp.family.kind == "imagen" else None
    if stage is not None and stage.is_super_resolution:
        size = stage.lowres_size
        lowres = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32, sharding=whole)
    return params, text, mask, rng, lowres


def _lower_sample_step(exp: experiment.Experiment, arguments: tuple[Any, ...]) -> Any:
    """One guided sampling step (steps=1) of the trained stage, lowered through sample.compiled_generate's program
    with the options sampling passes: a cascade stage's as cascade.py gives them, a single stage's as
    sample.generate_for_prompts does."""
    family, (params, text, mask, rng, lowres) = exp.family, arguments
    traced = family.capabilities.traced_sample_options
    steps = {"steps": 1} if family.kind == "imagen" else {}
    if family.capabilities.staged:
        stage = family.train_stage
        options = {k: stage.sample_option(k, {}) for k in traced} | steps
        options |= {"lowres": lowres} if lowres is not None else {}
        return sample.lower_generate(
            family.generate_stage,
            params,
            text,
            mask,
            rng,
            static_args=(stage.name,),
            traced=traced,
            placement=exp.placement,
            **options,
        )
    options = sample.traced_option_defaults(family, exp.config.get("sample"), steps)
    return sample.lower_generate(
        family.generate, params, text, mask, rng, traced=traced, placement=exp.placement, **options
    )


def _stage_rows(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    chip: topology.Chip,
    settings: dict,
    programs: tuple[str, ...],
) -> Iterator[dict]:
    """The train step's and one guided sampling step's rows (those in `programs`) for the trained stage of
    `config`, each yielded once compiled."""
    text = TextShape(*text_encoder.text_shape(config.text))
    exp = experiment.assemble(config, "", None, text, mesh)
    family = exp.family
    name = family.train_stage.name if family.capabilities.staged else config.family
    batch_size = int(config.train.batch_size)
    parallel.per_device_batch(batch_size, mesh, int(config.train.get("grad_accum_steps", 1)))
    state = abstract_like(exp.state_shapes, exp.state_shardings)
    train_step = exp.jit_train_step(jax.random.key(int(config.seed) + 1))
    common = {"chip": chip, "mesh": mesh, "stage": name, **settings}
    if "train_step" in programs:
        batch = _abstract_batch(exp, batch_size)
        yield _measure(
            lambda: train_step.lower(state, batch),
            (state, batch),
            program="train_step",
            batch=batch_size,
            **common,
        )
    if "sample_step" not in programs:
        return
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    sample_batch = int(config.compile.sample_batch_size) or shards
    arguments = _sample_arguments(exp, sample_batch)
    yield _measure(
        lambda: _lower_sample_step(exp, arguments),
        arguments,
        program="sample_step",
        batch=sample_batch,
        **common,
    )


def _encoder_row(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, chip: topology.Chip, settings: dict
) -> dict:
    """The text encoder's row, as training runs a pretrained T5 (experiment.text_placement, encoder.jit_embed):
    sharded over one host's chips (parallel.host_mesh), encoding that host's share of a global batch of prompts.
    (The small built-in encoder of the CPU configs runs whole on one device instead.)"""
    devices = list(mesh.devices.flat)
    hosts = len({d.process_index for d in devices})
    host = parallel.host_mesh(config.mesh, devices)
    module = T5Encoder(text_encoder.encoder_config(config.text))
    rules = parallel.axis_rules(config.get("mesh"))
    batch_size, length = int(config.train.batch_size) // hosts, int(config.text.max_length)
    one = jnp.ones((1, 1), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), one, one)))
    params = abstract_like(shapes, param_shardings(module.config, host, rules))
    rows = parallel.batch_sharding(host, 2)
    tokens = jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=rows)
    mask = jax.ShapeDtypeStruct((batch_size, length), jnp.bool_, sharding=rows)
    return _measure(
        lambda: text_encoder.jit_embed(module, host, rules).lower(params, tokens, mask),
        (params, tokens, mask),
        chip=chip,
        mesh=host,
        stage="text",
        program="encode_text",
        batch=batch_size,
        **settings,
    )


def _advice(row: dict, config: ml_collections.ConfigDict) -> str:
    """One line: by how much the program misses the chip's memory, and which settings would help."""
    memory, hbm = row["bytes_per_chip"], row["hbm_bytes_per_chip"]
    over = memory["total"] - hbm
    mesh, chips = row["mesh"], row["chips"]
    knobs = []
    # fsdp shards what every chip holds whole (parameters, optimizer state, EMA): worth it when that is a good
    # part of the need; the batch is split over data x fsdp either way.
    if mesh["fsdp"] < chips // mesh["tensor"] and memory["arguments"] > 0.25 * memory["total"]:
        knobs.append(
            f"mesh.fsdp={min(mesh['fsdp'] * 4, chips // mesh['tensor'])} (now {mesh['fsdp']}; shards the "
            f"parameters and optimizer state, {memory['arguments'] / GiB:.2f} GiB of arguments per chip)"
        )
    if row["program"] == "train_step":
        stage = row["stage"]
        model = (
            config.stages[stage].model
            if "stages" in config and stage in config.stages
            else config.get("model")
        )
        if model is not None and not model.get("remat", False):
            key = (
                f"stages.{stage}.model.remat"
                if "stages" in config and stage in config.stages
                else "model.remat"
            )
            knobs.append(f"{key}=True (recomputes activations in the backward pass)")
        knobs.append(
            f"train.grad_accum_steps={2 * int(config.train.get('grad_accum_steps', 1))} or a smaller "
            f"compile.batch_size (temporaries are {memory['temporaries'] / GiB:.2f} GiB per chip)"
        )
    else:
        knobs.append(f"a smaller batch (now {row['batch']})")
    if mesh["tensor"] == 1 and chips > 1:
        knobs.append("mesh.tensor=2 or 4 (splits activations' channels and heads)")
    refused = row.get("refused")
    needs = f"at least {memory['total'] / GiB:.2f} GiB" if refused else f"{memory['total'] / GiB:.2f} GiB"
    why = (
        f" (the compiler refused it: {memory['temporaries'] / GiB:.2f} GiB of temporaries, "
        f"{refused['usable_hbm_bytes'] / GiB:.2f} GiB usable)"
        if refused
        else ""
    )
    return (
        f"{row['stage']} {row['program']} does not fit {row['topology']}: it needs {needs} per chip{why}, "
        f"{over / GiB:.2f} GiB ({over / hbm:.0%}) more than the {hbm / GiB:.0f} GiB of a "
        f"{row['topology'].split(':')[0]} chip. Try {'; '.join(knobs)}."
    )


def compile_rows(config: ml_collections.ConfigDict) -> list[dict]:
    """Every row (see the module docstring) for config.compile.topology, printed as each is compiled."""
    name = str(config.compile.topology)
    chip = topology.chip_of(name)
    devices = topology.devices(name)
    mesh = parallel.make_mesh(config.mesh, devices)
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.batch_size = int(config.compile.batch_size) or int(config.train.batch_size)
    settings = {"topology_name": name}
    family = get_family(config)
    names = [stage.name for stage in family.stages] if family.capabilities.staged else [None]
    if config.compile.stage:
        if config.compile.stage not in names:
            raise UserError(
                f"compile.stage={config.compile.stage!r} is not a stage of this config; choose from {names}."
            )
        names = [config.compile.stage]
    programs = topology.check_programs(config.compile.programs)
    rows = []
    for stage in names:
        if stage is not None:
            config.train_stage = stage
        for row in _stage_rows(config, mesh, chip, settings, programs):
            print(json.dumps(row), flush=True)
            rows.append(row)
    if "encode_text" in programs:
        row = _encoder_row(config, mesh, chip, settings)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def run(config: ml_collections.ConfigDict, workdir: str, prompts: list[str]) -> None:
    rows = compile_rows(config)
    misses = [row for row in rows if not row["fits"]]
    for row in misses:
        print(_advice(row, config), flush=True)
    if misses:
        raise DoesNotFitError(
            f"{len(misses)} of {len(rows)} compiled programs do not fit {config.compile.topology} (see above)."
        )
