"""Shows that a refactor changed no number: the logged losses of the first steps and the sample PNGs of the tiny
configs, bit for bit, between two checkouts of this repository.

    # once per checkout (old = e.g. a `git worktree add /tmp/old <commit>`):
    python experiments/refactor_equivalence.py digest --repo /tmp/old --out /tmp/old.json
    python experiments/refactor_equivalence.py digest --repo . --out /tmp/new.json
    python experiments/refactor_equivalence.py compare /tmp/old.json /tmp/new.json

`digest` trains every run of RUNS for `--steps` steps (log_every=1) in a fresh workdir with the checkout's own
code (its folder first on the Python path), then records every logged metric except the timing ones, and the
SHA-256 of every PNG the run wrote (sample grids, cascade grids, reconstructions). `compare` prints each
difference and exits 1 if there is one. Both checkouts must run on the same machine: XLA's CPU code is
deterministic for a given build and CPU, not across them.
"""

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile

# (name, config, extra flags); a cascade's stages train one after another into one workdir.
RUNS = (
    ("quickstart", "configs/quickstart.py:tiny", ()),
    ("gan", "configs/gan_shapes.py:tiny", ()),
    ("vae", "configs/vae_shapes.py:tiny", ()),
    ("vq", "configs/vae_shapes.py:vq,tiny", ()),
    ("cascade_base", "configs/shapes_cascade.py:tiny", ()),
    ("cascade_sr", "configs/shapes_cascade.py:tiny", ("--config.train_stage=sr32",)),
)
TIMING = {"images_per_sec", "flops_per_sec", "mfu"}


def _run(repo: str, config: str, workdir: str, steps: int, extra: tuple[str, ...]) -> None:
    command = [
        sys.executable,
        "-m",
        "imagen_jax.main",
        f"--config={os.path.join(repo, config)}",
        f"--workdir={workdir}",
        f"--config.train.steps={steps}",
        "--config.train.log_every=1",
        f"--config.train.checkpoint_every={steps}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(repo)}
    subprocess.run(command, cwd=repo, env=env, check=True)


def _metrics(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows.append({k: v for k, v in row.items() if k not in TIMING})
    return rows


def digest(repo: str, steps: int) -> dict:
    """{run name: {"metrics": {relative path: rows}, "pngs": {relative path: sha256}}}."""
    result = {}
    with tempfile.TemporaryDirectory() as root:
        workdirs = {}
        for name, config, extra in RUNS:
            stem = name.split("_")[0]  # the cascade's stages share one workdir
            workdir = workdirs.setdefault(stem, os.path.join(root, stem))
            _run(repo, config, workdir, steps, extra)
        for stem, workdir in workdirs.items():
            metrics = {
                os.path.relpath(p, workdir): _metrics(p)
                for p in sorted(glob.glob(os.path.join(workdir, "**", "metrics.jsonl"), recursive=True))
            }
            pngs = {}
            for path in sorted(glob.glob(os.path.join(workdir, "**", "*.png"), recursive=True)):
                with open(path, "rb") as f:
                    pngs[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
            result[stem] = {"metrics": metrics, "pngs": pngs}
    return result


def compare(old: dict, new: dict) -> list[str]:
    """Every difference between two digests, one line each (empty: bit-identical)."""
    differences = []
    for run in sorted(set(old) | set(new)):
        a, b = old.get(run), new.get(run)
        if a is None or b is None:
            differences.append(f"{run}: only in {'new' if a is None else 'old'}")
            continue
        for kind in ("metrics", "pngs"):
            for path in sorted(set(a[kind]) | set(b[kind])):
                if a[kind].get(path) != b[kind].get(path):
                    differences.append(f"{run}: {kind} {path} differ")
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("digest")
    make.add_argument("--repo", default=".")
    make.add_argument("--out", required=True)
    make.add_argument("--steps", type=int, default=20)
    check = commands.add_parser("compare")
    check.add_argument("old")
    check.add_argument("new")
    args = parser.parse_args()
    if args.command == "digest":
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(digest(args.repo, args.steps), f, indent=1, sort_keys=True)
        return 0
    with open(args.old, encoding="utf-8") as f:
        old = json.load(f)
    with open(args.new, encoding="utf-8") as f:
        new = json.load(f)
    differences = compare(old, new)
    for line in differences:
        print(line)
    runs = len(set(old) | set(new))
    pngs = sum(len(r["pngs"]) for r in old.values())
    steps = sum(len(rows) for r in old.values() for rows in r["metrics"].values())
    print(f"{len(differences)} differences ({runs} runs, {steps} logged steps, {pngs} PNGs compared)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
