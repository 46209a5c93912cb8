"""Seeding, and RNG state capture that survives torch.load(weights_only=True).

weights_only checkpoints may hold tensors, dicts, lists, tuples and Python scalars only, so the
numpy state array is stored as a list of ints and rebuilt on restore.
"""
import random

import numpy as np
import torch

NUMPY_STATE_FIELDS = ("algorithm", "keys", "pos", "has_gauss", "cached_gaussian")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    version, internal_state, gauss_next = random.getstate()
    numpy_state = dict(zip(NUMPY_STATE_FIELDS, np.random.get_state()))
    numpy_state["keys"] = numpy_state["keys"].tolist()
    state = {
        "python": {"version": version, "internal": list(internal_state), "gauss_next": gauss_next},
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy_state = dict(state["numpy"])
    numpy_state["keys"] = np.asarray(numpy_state["keys"], dtype=np.uint32)
    np.random.set_state(tuple(numpy_state[field] for field in NUMPY_STATE_FIELDS))
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available() and "cuda" in state:
        # A resume may see fewer or more GPUs than the run that saved: restore the devices both have.
        for device_index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), device_index)
