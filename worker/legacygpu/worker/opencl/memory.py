"""Buffer planning: which device values share which buffers.

Every device value that is not an alias (a reshape of another value) and
not a weight gets a *slot*. A value is live from the step that writes it to
the last step that reads it or any of its aliases; scratch space is live
for its one step. Walking the steps in order, slots whose values died
before the current step are free; a new value takes the smallest free slot
big enough for it, else grows the largest free one, else opens a new slot.
The queue is in-order, so a slot can be rewritten as soon as the step that
last read it has been enqueued.

:func:`check` refuses a plan the device cannot hold: one buffer above the
device's largest allocation, or slots plus weights above its global memory.
"""

from __future__ import annotations

from legacygpu.core.errors import ModelError

from .plan import Plan

__all__ = ["assign", "check"]

_ALIGN = 256


def _root(plan: Plan, name: str) -> str:
    val = plan.values[name]
    while val.alias_of is not None:
        val = plan.values[val.alias_of]
    return val.name


def assign(plan: Plan) -> None:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        for name in (*step.outputs, *step.scratch, *step.inputs):
            val = plan.values.get(name)
            if val is None or val.where != "device":
                continue
            root = _root(plan, name)
            first.setdefault(root, i)
            last[root] = max(last.get(root, i), i)
    by_start: dict[int, list[str]] = {}
    for root, i in first.items():
        by_start.setdefault(i, []).append(root)
    sizes: list[int] = []
    free: list[int] = []
    live: dict[int, str] = {}
    slot_of: dict[str, int] = {}
    for i in range(len(plan.steps)):
        for slot, owner in list(live.items()):
            if last[owner] < i:
                free.append(slot)
                del live[slot]
        for root in by_start.get(i, []):
            need = max(-(-plan.values[root].nbytes // _ALIGN) * _ALIGN, _ALIGN)
            fits = [s for s in free if sizes[s] >= need]
            if fits:
                slot = min(fits, key=lambda s: sizes[s])
            elif free:
                slot = max(free, key=lambda s: sizes[s])
                sizes[slot] = need
            else:
                slot = len(sizes)
                sizes.append(need)
            if slot in free:
                free.remove(slot)
            live[slot] = root
            slot_of[root] = slot
    plan.slot_of = slot_of
    plan.slot_sizes = sizes


def check(plan: Plan, weights: object) -> None:
    info = plan.dctx.info
    biggest = max(plan.slot_sizes, default=0)
    if info.max_alloc_bytes and biggest > info.max_alloc_bytes:
        owner = next(
            (r for r, s in plan.slot_of.items() if plan.slot_sizes[s] == biggest), "an intermediate value"
        )
        val = plan.values.get(owner)
        what = f"{owner!r} of shape {list(val.shape)}" if val is not None else owner
        raise ModelError(
            f"this model needs a {biggest / 2**20:,.1f} MiB buffer for {what} at input shapes "
            f"{plan.input_shapes}; {info.name} allocates at most {info.max_alloc_bytes / 2**20:,.1f} MiB "
            "in one buffer (try a smaller batch or input size)"
        )
    total = plan.peak_bytes + int(getattr(weights, "nbytes", 0))
    if info.global_mem_bytes and total > info.global_mem_bytes:
        raise ModelError(
            f"this model needs {total / 2**20:,.1f} MiB of device memory at input shapes {plan.input_shapes}; "
            f"{info.name} has {info.global_mem_bytes / 2**20:,.1f} MiB (try a smaller batch or input size)"
        )
