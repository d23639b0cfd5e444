"""mode=compile (ahead-of-time compilation for a TPU topology through libtpu, no TPU attached), activation sharding
constraints, the config's logical-axis rules, and staying off libtpu on a machine without a TPU.

The compile tests need libtpu (the test extra installs it); without it they are skipped and the missing-libtpu
message is tested instead by hiding it.
"""

import importlib.util
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import quickstart
from imagen_jax import activation_sharding, experiment, main, parallel, topology
from imagen_jax.models import layers
from imagen_jax.models.registry import get_family
from imagen_jax.models.unet import UNet
from imagen_jax.modes import compile as compile_mode
from imagen_jax.text.encoder import text_shape
from imagen_jax.training import hparams as hparams_lib
from imagen_jax.training import steps

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (pip install -e ".[tpu]")')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mesh(data, fsdp, tensor):
    return parallel.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor}))


def _json_rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@needs_libtpu
def test_compile_quickstart_tiny_for_v5e_2x2_end_to_end(capsys, tmp_path):
    argv = ["main", "--config", "configs/quickstart.py:tiny", "--workdir", str(tmp_path / "w")]
    argv += ["--config.mode=compile", "--config.compile.topology=v5e:2x2"]
    assert main.main(argv) == 0
    rows = _json_rows(capsys.readouterr().out)
    assert [(r["stage"], r["program"]) for r in rows] == [
        ("imagen", "train_step"),
        ("imagen", "sample_step"),
        ("text", "encode_text"),
    ]
    assert not (tmp_path / "w").exists()  # nothing written
    config = quickstart.get_config("tiny")
    train, sample, text = rows
    for row in rows:
        assert row["topology"] == "v5e:2x2" and row["chips"] == 4
        if (
            row["program"] == "encode_text"
        ):  # T5 is sharded over one host's chips (fsdp), as a pretrained one runs
            assert row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
        else:
            assert row["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}  # mesh.data=-1 takes the 4 chips
        assert row["hbm_bytes_per_chip"] == 16 * 2**30 and row["fits"]
        memory = row["bytes_per_chip"]
        assert memory["total"] == (
            memory["arguments"]
            + memory["outputs"]
            - memory["aliased"]
            + memory["temporaries"]
            + memory["generated_code"]
        )
        assert row["ideal_seconds"] == pytest.approx(row["flops_per_chip"] / 197e12)
    assert train["batch"] == config.train.batch_size and sample["batch"] == 4  # one image per batch shard

    # The train state is replicated over data=4: each chip holds all of it, plus its quarter of the batch, as
    # arguments; the donated state comes back in the same buffers (aliased).
    family = get_family(config)
    program = steps.program(family, hparams_lib.from_config(config.train))
    length, width = text_shape(config.text)
    batch = jax.eval_shape(lambda: experiment.example_batch(config.data.image_size, length, width, 1))
    state = nn.meta.unbox(experiment.abstract_boxed_state(family, program.optimizer, batch))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    size, per_chip = config.data.image_size, config.train.batch_size // 4
    per_chip_batch = per_chip * (size * size * 3 * 4 + length * width * 4 + length)
    # (No upper bound: TPU layouts pad small arrays to whole tiles, e.g. a [3,3,8,8] kernel's 8 x 8 to 8 x 128.)
    memory = train["bytes_per_chip"]
    assert memory["aliased"] >= state_bytes and memory["arguments"] - memory["aliased"] >= per_chip_batch

    # FLOPs per chip: each chip runs the step for its quarter of the batch. XLA:CPU's count of the same lowered
    # step at that batch is a second count of that work; the TPU compiler counts its fusions and the data-parallel
    # gradient reduction differently (1.29x measured), but a chip doing the whole batch would count ~4x.
    describe_flops = (
        jax.jit(program.step)
        .lower(
            state,
            jax.eval_shape(lambda: experiment.example_batch(size, length, width, per_chip)),
            jax.random.key(0),
        )
        .cost_analysis()["flops"]
    )
    assert 0.8 < train["flops_per_chip"] / describe_flops < 1.6
    # The text encoder has a closed form: per token and layer, the q/k/v/o projections (4 x 2 d h k), the gated
    # feed-forward (3 x 2 d f) and attention's two products (2 x 2 L h k); each chip encodes a quarter. XLA
    # also counts the norms, GELU and softmax (a few percent here).
    t5 = config.text.t5
    d, hk, f, L = t5.d_model, t5.num_heads * t5.d_kv, t5.d_ff, config.text.max_length
    closed_form = per_chip * L * t5.num_layers * (4 * 2 * d * hk + 3 * 2 * d * f + 2 * 2 * L * hk)
    assert 1.0 <= text["flops_per_chip"] / closed_form < 1.15
    assert sample["flops_per_chip"] > 0


@needs_libtpu
def test_a_program_that_does_not_fit_says_by_how_much_and_what_would_help(capsys, tmp_path):
    argv = ["main", "--config", "configs/quickstart.py:tiny", "--workdir", str(tmp_path / "w")]
    argv += [
        "--config.mode=compile",
        "--config.compile.topology=v5e:2x2",
        "--config.compile.batch_size=2097152",
        "--config.compile.programs=('train_step',)",
    ]
    assert main.main(argv) == 2
    captured = capsys.readouterr()
    (train,) = _json_rows(captured.out)
    assert train["batch"] == 2097152 and not train["fits"]
    # XLA refuses to compile it; the row keeps the temporaries the compiler states and the arguments' shards
    memory = train["bytes_per_chip"]
    assert train["refused"]["usable_hbm_bytes"] < 16 * 2**30 < memory["temporaries"]
    size = quickstart.get_config("tiny").data.image_size
    assert (
        memory["arguments"] >= 2097152 // 4 * size * size * 3 * 4
    )  # at least the chip's quarter of the images
    assert memory["total"] == memory["arguments"] + memory["temporaries"]
    over = (memory["total"] - 16 * 2**30) / 2**30
    lines = [line for line in captured.out.splitlines() if "does not fit" in line]
    assert lines[0].startswith(
        f"imagen train_step does not fit v5e:2x2: it needs at least {over + 16:.2f} GiB per chip"
    )
    assert f", {over:.2f} GiB ({over / 16:.0%}) more than the 16 GiB of a v5e chip" in lines[0]
    assert "model.remat=True" in lines[0] and "train.grad_accum_steps=2" in lines[0]
    assert "mesh.fsdp" not in lines[0]  # the batch, not the replicated state, is what does not fit
    assert "error: 1 of 1 compiled programs do not fit v5e:2x2" in captured.err


def test_missing_libtpu_is_one_line_at_the_door(capsys, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
    )
    argv = ["main", "--config", "configs/quickstart.py:tiny", "--workdir", str(tmp_path / "w")]
    assert main.main(argv + ["--config.mode=compile", "--config.compile.topology=v5e:2x2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[tpu]"' in err and "libtpu" in err
    assert main.main(argv + ["--config.mode=compile"]) == 2  # no topology
    assert "--config.compile.topology=v5p:8x8x4" in capsys.readouterr().err
    assert main.main(argv + ["--config.mode=compile", "--config.compile.topology=v9x:2x2"]) == 2
    assert "known generations: v4, v5e, v5p, v6e" in capsys.readouterr().err
    programs = "--config.compile.programs=('train_step', 'sample')"
    assert main.main(argv + ["--config.mode=compile", "--config.compile.topology=v5e:2x2", programs]) == 2
    assert "choose one or more of ('train_step', 'sample_step', 'encode_text')" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_cpu_runs_stay_off_an_installed_libtpu_without_a_tpu():
    """With libtpu installed and no TPU chip, a normal run initialises only the CPU: no libtpu start-up noise on
    stderr, and libtpu's machine-wide lock is left alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    code = (
        "from imagen_jax import parallel; import jax; skipped = parallel.skip_absent_tpu_runtime(); "
        "print(skipped, [d.platform for d in jax.devices()])"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from jax._src import hardware_utils

    if HAS_LIBTPU and hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
        assert result.stdout.split()[0] == "True"
    assert "cpu" in result.stdout
    assert "TPU" not in result.stderr and "libtpu" not in result.stderr, result.stderr


def test_constrain_places_activations_by_the_rules_and_drops_axes_that_do_not_divide():
    mesh = _mesh(2, 2, 2)
    x = jnp.zeros((8, 4, 4, 6))

    def f(x):
        return layers.constrain(x * 2, layers.FEATURE_MAP), layers.constrain(
            x[:, :, :, :3], layers.FEATURE_MAP
        )

    def under_mesh(x):  # the context is entered while tracing, as experiment.jit_train_step does
        with activation_sharding.use(mesh, parallel.LOGICAL_AXIS_RULES):
            return f(x)

    assert "sharding_constraint" not in str(jax.make_jaxpr(f)(x))
    even, odd = jax.jit(under_mesh)(x)
    assert even.sharding.spec == PartitionSpec(("data", "fsdp"), None, None, "tensor")
    assert odd.sharding.spec == PartitionSpec(("data", "fsdp"))  # 3 channels over tensor=2: replicated


def test_unet_constrains_every_block_boundary_only_under_a_mesh():
    unet = UNet(
        dim=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_levels=(1,),
        cross_attn_levels=(1,),
        head_dim=8,
        cond_dim=16,
        efficient=False,
    )
    x, log_snr = jnp.zeros((8, 16, 16, 3)), jnp.zeros((8,))
    text, mask = jnp.zeros((8, 4, 16)), jnp.ones((8, 4), bool)
    params = jax.eval_shape(lambda: unet.init(jax.random.key(0), x, log_snr, text, mask))

    def plain(params):
        return unet.apply(params, x, log_snr, text, mask)

    def under_mesh(params):  # a function of its own: traces are cached per function
        with activation_sharding.use(_mesh(2, 2, 2), parallel.LOGICAL_AXIS_RULES):
            return unet.apply(params, x, log_snr, text, mask)

    def count(f) -> int:
        return str(jax.make_jaxpr(f)(params)).count("sharding_constraint")

    assert count(plain) == 0
    # The base U-Net with 2 levels of 1 res block, self- and cross-attention at level 1: conv_in (1), six res
    # blocks (down0, down1, mid x2, up1, up0), two skip joins, one down- and one upsampler, and six attention
    # blocks (self + cross at down1, mid and up1), each with its q, k, v and output (24).
    assert count(under_mesh) == 1 + 6 + 2 + 2 + 24


def test_logical_axis_rules_from_the_config_are_checked():
    assert parallel.axis_rules(ml_collections.ConfigDict({"data": 1})) == parallel.LOGICAL_AXIS_RULES
    config = quickstart.get_config("tiny")
    parallel.add_mesh_keys(config)
    assert parallel.axis_rules(config.mesh) == parallel.LOGICAL_AXIS_RULES
    rules = list(parallel.LOGICAL_AXIS_RULES)
    for bad, message in (
        ([*rules, ("pixels", "tensor")], "no model uses"),
        ([*rules[:-1], ("activation_mlp", "model")], "use None, one of"),
        ([*rules, ("embed", None)], "twice"),
        ([r for r in rules if r[0] != "vocab"], "no rule for \\['vocab'\\]"),
        ([*rules, "embed"], "is not a \\(logical axis, mesh axes\\) pair"),
    ):
        with pytest.raises(parallel.MeshConfigError, match=message):
            parallel.axis_rules(ml_collections.ConfigDict({"logical_axis_rules": tuple(bad)}))


def test_logical_axis_rules_override_reaches_the_shardings(tmp_path):
    """--config.mesh.logical_axis_rules replaces the table: here conv_out is no longer split over tensor."""
    from imagen_jax import workdir as workdir_lib

    rules = tuple((name, None if name == "conv_out" else axes) for name, axes in parallel.LOGICAL_AXIS_RULES)
    argv = ["main", "--config", "configs/quickstart.py:tiny", "--workdir", str(tmp_path)]
    config, _, _ = workdir_lib.parse_command_line(argv + [f"--config.mesh.logical_axis_rules={rules!r}"])
    assert tuple(tuple(r) for r in config.mesh.logical_axis_rules) == rules
    config.mesh.update(dict(data=2, fsdp=2, tensor=2))
    config.model.dim = 16
    mesh = parallel.make_mesh(config.mesh)
    text = compile_mode.TextShape(*text_shape(config.text))
    exp = experiment.assemble(config, str(tmp_path), None, text, mesh)
    kernel = exp.state_shardings.params["conv_in"]["kernel"]
    # conv_in [3,3,3,16]: its 3 input channels do not split over fsdp, and conv_out is no longer sharded
    assert kernel.spec == PartitionSpec(None, None, None, None)
    conv = exp.state_shardings.params["down0_block0"]["conv1"]["kernel"]
    assert conv.spec == PartitionSpec(None, None, "fsdp", None)
    default = experiment.assemble(quickstart_mesh(config), str(tmp_path), None, text, mesh)
    conv = default.state_shardings.params["down0_block0"]["conv1"]["kernel"]
    assert conv.spec == PartitionSpec(None, None, "fsdp", "tensor")


def quickstart_mesh(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the default logical-axis rules."""
    default = ml_collections.ConfigDict(config.to_dict())
    default.mesh.logical_axis_rules = parallel.LOGICAL_AXIS_RULES
    return default


def test_topology_names_and_chip_figures():
    assert topology.chip_of("v5p:8x8x4").hbm_bytes == 95 * 2**30
    assert topology.chip_of("v4:8x8x4").chip_config == "megacore"
    for bad in ("v5p", "v5p-256", "tpu:2x2", "v5p:8x8x4x2"):
        with pytest.raises(topology.TopologyError, match="not a TPU topology name"):
            topology.chip_of(bad)
    if HAS_LIBTPU:
        assert len(topology.devices("v4:2x2x1")) == 4  # one device per chip (megacore), as on a v4 VM
        assert len(topology.devices("v5e:2x2")) == 4
    np.testing.assert_equal(sorted(topology.CHIPS), ["v4", "v5e", "v5p", "v6e"])
