"""Will the paper's cascade fit? mode=compile for each of the paper's stages at the paper's examples per chip on
TPU v4 (the paper's hardware) and v5p, on this machine (no TPU: libtpu compiles for the named topology), one
subprocess per row, so that each row's compile time and peak host memory are its own.

    pip install -e ".[tpu]"
    python experiments/benchmarks/will_it_fit.py                       # every row below, in order
    python experiments/benchmarks/will_it_fit.py --only sr256_v4_t4    # some rows
    python experiments/benchmarks/will_it_fit.py --table               # the README table from the kept results

Each row's JSON lines (imagen_jax/modes/compile.py) are appended to results/will_it_fit.jsonl with the command,
the date, and the wall and CPU seconds of the whole command. The README's "Will it fit?" table is printed from
that file.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results", "will_it_fit.jsonl")

# name: (config file, stage, topology, extra overrides, programs). The paper (Sec. 4): 256 TPU-v4 chips for the
# 2B base and 128 for each super-resolution stage, global batch 2048 for every stage: 8 examples per chip for the
# base, 16 for the SR stages. On a data-parallel mesh every chip runs the same program whatever the chip count
# (the whole train state and its own examples), so each row compiles that per-chip program on a 4-chip slice at
# the same examples per chip (the "equivalence" rows check it: per-chip bytes on 4 vs 16 chips). Compiling for all
# 256 chips took more than 17 GB of host memory and 45 minutes here without finishing the train step.
_ALL = ("train_step", "sample_step", "encode_text")
ROWS = {
    "base64_v4": ("imagen_base64.py", "base64", "v4:2x2x1", ("--config.compile.batch_size=32",), _ALL),
    "sr256_v4": ("imagen_sr256.py", "sr256", "v4:2x2x1", ("--config.compile.batch_size=64",), _ALL[:2]),
    "sr1024_v4": ("imagen_sr1024.py", "sr1024", "v4:2x2x1", ("--config.compile.batch_size=64",), _ALL[:2]),
    "sr256_v4_t4": (
        "imagen_sr256.py",
        "sr256",
        "v4:2x2x4",
        ("--config.compile.batch_size=64", "--config.mesh.data=4", "--config.mesh.tensor=4"),
        ("train_step",),
    ),
    "base64_v5p": ("imagen_base64.py", "base64", "v5p:2x2x1", ("--config.compile.batch_size=64",), _ALL[:1]),
    "sr256_v5p": ("imagen_sr256.py", "sr256", "v5p:2x2x1", ("--config.compile.batch_size=64",), _ALL[:1]),
    "sr1024_v5p": ("imagen_sr1024.py", "sr1024", "v5p:2x2x1", ("--config.compile.batch_size=64",), _ALL[:1]),
    "equivalence_4": ("shapes_base.py", "", "v5e:2x2", ("--config.compile.batch_size=8",), _ALL[:1]),
    "equivalence_16": ("shapes_base.py", "", "v5e:4x4", ("--config.compile.batch_size=32",), _ALL[:1]),
}


def command(name: str) -> list[str]:
    config, stage, topology, extra, programs = ROWS[name]
    return [
        sys.executable,
        "-m",
        "imagen_jax.main",
        "--config",
        os.path.join("configs", config),
        "--workdir",
        "/tmp/will_it_fit",
        "--config.mode=compile",
        f"--config.compile.topology={topology}",
        *([f"--config.compile.stage={stage}"] if stage else []),
        f"--config.compile.programs={programs!r}",
        *extra,
    ]


def run(name: str) -> None:
    cmd = command(name)
    print("$", " ".join(cmd[1:]), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    other = [line for line in result.stdout.splitlines() if not line.startswith("{")]
    print("\n".join(other + result.stderr.strip().splitlines()[-3:]), flush=True)
    if not rows:
        raise SystemExit(f"{name}: no rows (exit status {result.returncode})")
    record = {
        "row": name,
        "command": "python -m imagen_jax.main " + " ".join(cmd[3:]),
        "date": datetime.date.today().isoformat(),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_host_rss_gib": round(after.ru_maxrss / 2**20, 2),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    for row in rows:
        print(summary(row), flush=True)


def summary(row: dict) -> str:
    memory, gib = row["bytes_per_chip"], 2**30
    mesh = "x".join(str(row["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    return (
        f"{row['stage']:7s} {row['program']:12s} {row['topology']:10s} mesh {mesh:9s} batch {row['batch']:5d}: "
        f"{memory['total'] / gib:6.2f} GiB/chip (args {memory['arguments'] / gib:.2f}, temps "
        f"{memory['temporaries'] / gib:.2f}) of {row['hbm_bytes_per_chip'] / gib:.0f}, fits={row['fits']}, "
        f"{row['flops_per_chip'] / 1e12:.1f} TFLOP/chip, ideal {row['ideal_seconds']:.3f} s, "
        f"compiled in {row['compile_seconds']:.0f} s"
    )


def table() -> str:
    """The README table: one line per (stage, program, topology, mesh) of the paper's stages, the newest record of
    each, with the paper's slice it stands for (batch 2048 at the same examples per batch shard, data x fsdp; a
    tensor axis multiplies the chips, since its chips share their shard's examples)."""
    latest: dict[tuple, dict] = {}
    with open(RESULTS, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            for row in record["rows"]:
                if row["stage"] == "imagen":  # the equivalence check, not a paper stage
                    continue
                mesh = tuple(row["mesh"][a] for a in ("data", "fsdp", "tensor"))
                latest[(row["stage"], row["program"], row["topology"], mesh)] = {**row, "name": record["row"]}
    gib = 2**30
    lines = [
        "| stage | program | compiled for | mesh data x fsdp x tensor | batch (per shard) | stands for (batch 2048) "
        "| GiB per chip: total (arguments, temporaries) | HBM | fits | TFLOP per chip | ideal step | compile here "
        "| reproduce: will_it_fit.py --only |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (stage, program, topology, mesh), row in latest.items():
        memory = row["bytes_per_chip"]
        per_shard = row["batch"] / (mesh[0] * mesh[1])
        generation = topology.split(":")[0]
        stands_for = f"{2048 / per_shard * mesh[2]:.0f} {generation} chips" if program == "train_step" else ""
        lines.append(
            f"| {stage} | {program} | {topology} ({row['chips']} chips) | {' x '.join(map(str, mesh))} | "
            f"{row['batch']} ({per_shard:g}) | {stands_for} | "
            f"{'>= ' if 'refused' in row else ''}{memory['total'] / gib:.1f} ({memory['arguments'] / gib:.1f}, "
            f"{memory['temporaries'] / gib:.1f}) | {row['hbm_bytes_per_chip'] / gib:.0f} | "
            f"{'yes' if row['fits'] else 'no'} | {row['flops_per_chip'] / 1e12:.1f} | "
            f"{row['ideal_seconds']:.3f} s | {row['compile_seconds'] / 60:.1f} min | `{row['name']}` |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", choices=sorted(ROWS), help="rows to compile (default: all)")
    parser.add_argument("--table", action="store_true", help="print the README table from the kept results")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    for name in args.only or ROWS:
        run(name)


if __name__ == "__main__":
    main()
