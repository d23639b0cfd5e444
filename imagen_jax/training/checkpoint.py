"""Orbax checkpoints: the train state plus a JSON record (config, data position) per step, saved atomically.

Orbax writes each step into '<step>.orbax-checkpoint-tmp-*' and renames it to '<step>' only after writing
'<step>/commit_success.txt', so a save interrupted mid-write is never listed. A '<step>' folder without that
file (a copy cut short, a file system without atomic rename) is not listed either, and a training run moves it
aside to '<step>.incomplete' so the step can be saved again, and removes the temporary folders of saves that were
cut short ('<step>.orbax-checkpoint-tmp*'; the run holds the workdir's lock, so no other save is in progress). Saves
are asynchronous: `save` returns once the
arrays are copied off the devices, and the writing overlaps the next training steps. Restoring takes abstract
arrays carrying the *current* run's shardings, so a checkpoint written on one mesh restores onto any other.
"""

import json
import os
import re
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

COMMIT_FILE = "commit_success.txt"  # written by Orbax as the last file of a finished checkpoint
_ORBAX_TMP = re.compile(r"\d+\.orbax-checkpoint-tmp.*")  # a save in progress, or one cut short
_SET_ASIDE = re.compile(r"\d+\.incomplete(-\d+)?")

PyTree = Any


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read."""


def is_complete(step_dir: str) -> bool:
    """Whether a '<step>' checkpoint folder was finished by Orbax (its commit file exists)."""
    return os.path.isfile(os.path.join(step_dir, COMMIT_FILE))


class Checkpointer:
    """Keeps the last `keep` checkpoints, plus every one whose step is a multiple of `keep_period` (if > 0),
    under `directory`; lists and restores only complete ones."""

    def __init__(self, directory: str, *, keep: int, keep_period: int | None = None, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period or None,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "record", "data")
        )

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        return sorted(
            s for s in self._manager.all_steps() if is_complete(os.path.join(self.directory, str(s)))
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def set_aside_incomplete(self) -> list[str]:
        """Renames '<step>' folders without a commit file to '<step>.incomplete[-n]' (process 0; all processes
        wait for it), so they are never restored and their step can be saved again. Returns the new paths.

        Only the training run, the one writer of the directory, calls this: a reader could mistake a save in
        progress on a file system without atomic rename for an interrupted one.
        """
        moved = []
        if jax.process_index() == 0:
            for name in sorted(os.listdir(self.directory)):
                path = os.path.join(self.directory, name)
                if name.isdigit() and os.path.isdir(path) and not is_complete(path):
                    target, n = f"{path}.incomplete", 1
                    while os.path.exists(target):
                        target, n = f"{path}.incomplete-{n}", n + 1
                    os.rename(path, target)
                    moved.append(target)
                    print(
                        f"Ignoring the incomplete checkpoint {path} (no {COMMIT_FILE}); moved it to {target}."
                    )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("imagen_jax.checkpoint.set_aside_incomplete")
        self._manager.reload()
        return moved

    def tidy(self) -> None:
        """What a training run (the workdir's one writer, holding its lock) does before it restores: sets aside
        incomplete checkpoints, removes the temporary folders of saves cut short (never restorable), and lists
        the set-aside folders once, with the command that removes them (process 0 prints; all wait)."""
        self.set_aside_incomplete()
        if jax.process_index() == 0:
            removed = []
            for name in sorted(os.listdir(self.directory)):
                path = os.path.join(self.directory, name)
                if _ORBAX_TMP.fullmatch(name) and os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(name)
            if removed:
                print(
                    f"Removed the temporary folders of {len(removed)} interrupted save(s): {', '.join(removed)}."
                )
            aside = [n for n in sorted(os.listdir(self.directory)) if _SET_ASIDE.fullmatch(n)]
            if aside:
                paths = " ".join(os.path.join(self.directory, n) for n in aside)
                size = sum(_folder_bytes(os.path.join(self.directory, n)) for n in aside)
                print(
                    f"Note: {len(aside)} incomplete checkpoint(s) set aside in {self.directory} "
                    f"({size / 1e6:.1f} MB), never restored: {', '.join(aside)}. Remove them with: rm -r {paths}",
                    flush=True,
                )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("imagen_jax.checkpoint.tidy")
        self._manager.reload()

    def save(self, step: int, state: PyTree, record: dict[str, Any], data_state: dict | None = None) -> None:
        """Start saving `state` and the JSON-able `record` at `step` (asynchronously; see wait), and this
        process's data-iterator state (a JSON-able dict, one file per process) when given."""
        items = {"state": ocp.args.StandardSave(state), "record": ocp.args.JsonSave(record)}
        if data_state is not None:  # Grain's handler: <step>/data/process_<i>-of-<n>.json
            items["data"] = grain.checkpoint.CheckpointSave(_IteratorState(data_state))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_data(self, step: int) -> dict | None:
        """This process's data-iterator state saved at `step`, or None when that checkpoint has none."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
            return None
        receiver = _IteratorState(None)
        try:
            self._manager.restore(
                step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(receiver))
            )
        except Exception as err:
            raise CheckpointError(
                f"The data-iterator state of checkpoint {step} in {self.directory} cannot be read for process "
                f"{jax.process_index()} of {jax.process_count()} ({type(err).__name__}: {err}). A run resumes "
                "with the process count it was saved with; delete the checkpoint's data/ folder to restart the "
                "data stream at the checkpoint's step instead."
            ) from err
        return receiver.state

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """(state, record) at `step`; abstract_state holds jax.ShapeDtypeStruct leaves with target shardings."""
        step_dir = os.path.join(self.directory, str(step))
        if os.path.isdir(step_dir) and not is_complete(step_dir):
            raise CheckpointError(
                f"The checkpoint at step {step} in {self.directory} is incomplete (no {COMMIT_FILE}: its save "
                f"was interrupted). Delete {step_dir} to use an earlier checkpoint."
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # orbax raises many types for a damaged checkpoint
            raise self._unreadable(step, abstract_state, err) from err
        return restored["state"], dict(restored["record"])

    def _unreadable(self, step: int, abstract_state: PyTree, err: Exception) -> CheckpointError:
        """Why checkpoint `step` could not be restored: removed meanwhile, or holding a state of another layout
        than `abstract_state` (an intact checkpoint of another config), or damaged. Only a damaged checkpoint is
        worth deleting, so only then does the message say so."""
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir):
            return CheckpointError(
                f"The checkpoint at step {step} in {self.directory} was removed while it was being read (a "
                "training run in this workdir keeps only its last train.keep_checkpoints); run the command again."
            )
        differences = layout_differences(os.path.join(step_dir, "state"), abstract_state)
        if differences:
            return CheckpointError(
                f"The checkpoint at step {step} in {self.directory} holds a train state of another layout than "
                f"this config builds ({'; '.join(differences[:3])}): it is intact, but was trained with other "
                "settings. Run with the config it was trained with (omit --config to use the workdir's "
                "config.json), or use another --workdir."
            )
        reason = str(err).splitlines()[0] if str(err) else ""
        return CheckpointError(
            f"The checkpoint at step {step} in {self.directory} cannot be read ({type(err).__name__}: {reason}): "
            f"it is damaged. Delete {step_dir} to resume from an earlier checkpoint, or start a new run with "
            "another --workdir."
        )

    def read_record(self, step: int) -> dict[str, Any]:
        """The JSON record saved at `step`, without touching the arrays."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
        except Exception as err:
            raise CheckpointError(
                f"The record of checkpoint {step} in {self.directory} cannot be read: {err}"
            ) from err
        return dict(restored["record"])

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class _IteratorState:
    """A data-iterator state as Grain's checkpoint handler sees an iterator: frozen when the save starts (the
    training loop advances the real iterator while the save is written), filled in by a restore."""

    def __init__(self, state: dict | None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=1).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)

    def start_prefetch(self) -> None:
        pass


def abstract_like(shapes: PyTree, shardings: PyTree) -> PyTree:
    """ShapeDtypeStructs with the given shardings: the restore target for Checkpointer.restore."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
    )


def layout_differences(state_dir: str, abstract_state: PyTree) -> list[str]:
    """How the arrays saved in a checkpoint's state folder differ from `abstract_state` (paths and shapes), e.g.
    ["params/conv_in/kernel: (3, 3, 3, 8) saved, (3, 3, 3, 16) here", "opt_state/1/v_row: not saved"]; [] when
    they agree or the folder's metadata cannot be read (then the checkpoint is damaged, not different)."""
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir))
    except Exception:
        return []
    tree = getattr(metadata, "item_metadata", metadata)
    name = lambda path: jax.tree_util.keystr(path, simple=True, separator="/")
    saved = {
        name(p): tuple(m.shape)
        for p, m in jax.tree_util.tree_leaves_with_path(tree)
        if getattr(m, "shape", None) is not None
    }
    if not saved:
        return []
    wanted = {name(p): tuple(s.shape) for p, s in jax.tree_util.tree_leaves_with_path(abstract_state)}
    differences = [
        f"{k}: {saved[k]} saved, {wanted[k]} here" for k in wanted if k in saved and saved[k] != wanted[k]
    ]
    differences += [f"{k}: not saved" for k in wanted if k not in saved]
    differences += [f"{k}: saved, not in this config's state" for k in saved if k not in wanted]
    return differences
