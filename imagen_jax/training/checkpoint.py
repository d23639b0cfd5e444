"""Orbax checkpoints: the train state plus a JSON record (config, data position) per step, saved atomically.

Orbax writes each step into a temporary folder and renames it only once complete, so a save interrupted
mid-write is never listed, let alone restored. Restoring takes abstract arrays carrying the *current* run's
shardings, so a checkpoint written on one mesh restores onto any other.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read."""


class Checkpointer:
    """Keeps the last `keep` checkpoints (plus every `keep_period`-th step if given) under `directory`."""

    def __init__(self, directory: str, *, keep: int, keep_period: int | None = None, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period or None,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "record"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: PyTree, record: dict[str, Any]) -> None:
        """Start saving `state` and the JSON-able `record` at `step` (asynchronously; see wait)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            force=True,
        )

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """(state, record) at `step`; abstract_state holds jax.ShapeDtypeStruct leaves with target shardings."""
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # orbax raises many types for a damaged checkpoint
            raise CheckpointError(
                f"The checkpoint at step {step} in {self.directory} cannot be read ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Delete {os.path.join(self.directory, str(step))} "
                "to resume from an earlier checkpoint, or start a new run with another --workdir."
            ) from err
        return restored["state"], dict(restored["record"])

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


def abstract_like(shapes: PyTree, shardings: PyTree) -> PyTree:
    """ShapeDtypeStructs with the given shardings: the restore target for Checkpointer.restore."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
