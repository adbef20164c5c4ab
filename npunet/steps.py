"""The forward pass as an explicit list of steps, compiled once from the layer plan (npunet.spec.layer_plan).

A Step stands for one layer of the plan and names the kernel that runs it, the values it reads and the
values it writes; values are named after the layer that made them ("input" is the network's input). The
network (npunet.network) runs the list in order, with no decision left to the loop. Two lists come from
one plan:

- unfused (`compile_steps(plan, fuse=False)`): one kernel per layer, every tensor written. What
  Network.run_layers(x, keep=True) and Network.trace run, to show every layer.
- fused (`compile_steps(plan, fuse=True)`): what net(x) runs. Two tensors that only feed a dense 3x3 conv
  by Winograd are never written: a GroupNorm+ReLU output (the step before the conv only computes the
  per-channel coefficients, "group_norm_coefficients", and the conv normalises its input rows as it reads
  them, "conv3x3_winograd_normalised"; the head's 1x1 conv does the same, "head_normalised"), and a decoder's
  concat (the upsample and concat steps defer, "defer", and the conv reads the skip and upsamples the
  low-resolution rows as it goes, "conv3x3_winograd_upsampling"). Without Winograd after it, an upsample
  writes its concat buffer whole ("upsample_concat"). Each fusion is bit-identical to the unfused steps.

A step whose work is deferred shows its input unchanged (`shows`), so Network.run_layers(x) still yields one
output per layer. `alive_after` lists the values that later steps read: the network gives each step's
output a buffer that none of them occupies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npunet.kernels.conv import WINOGRAD_MIN_CI       # dense 3x3 convs from this many input channels
from npunet.spec import Layer


@dataclass(frozen=True)
class Step:
    layer: Layer                   # the plan layer this step stands for
    kernel: str                    # see Network._KERNELS
    inputs: tuple[str, ...]        # values read, in the kernel's argument order
    outputs: tuple[str, ...]       # values written (an in-place kernel writes into its input's buffer)
    shows: str                     # the value Network.run_layers yields for this layer
    alive_after: tuple[str, ...] = field(default=())   # values read by later steps


def compile_steps(plan: list[Layer], fuse: bool) -> list[Step]:
    """The steps of `plan`, one per layer, in order (see the module doc)."""
    steps: list[Step] = []
    current = "input"                       # the value the next layer reads
    deferred_norm: str | None = None        # coefficients a fused conv or head must apply as it reads
    deferred_concat: tuple[str, str] | None = None    # (skip, low) a fused conv must concatenate as it reads
    for i, layer in enumerate(plan):
        after = plan[i + 1] if i + 1 < len(plan) else None
        op, name = layer.op, layer.name
        if op == "conv3x3" and deferred_norm:
            step = Step(layer, "conv3x3_winograd_normalised", (current, deferred_norm), (name,), name)
            deferred_norm = None
        elif op == "conv3x3" and deferred_concat:
            step = Step(layer, "conv3x3_winograd_upsampling", deferred_concat, (name,), name)
            deferred_concat = None
        elif op == "head" and deferred_norm:
            step = Step(layer, "head_normalised", (current, deferred_norm), (name,), name)
            deferred_norm = None
        elif op == "norm_relu" and fuse and (_by_winograd(after) or (after is not None and after.op == "head")):
            deferred_norm = f"{name}.coefficients"
            step = Step(layer, "group_norm_coefficients", (current,), (deferred_norm,), current)
        elif op == "save_skip":
            step = Step(layer, "alias", (current,), (name,), name)
        elif op == "upsample":
            concat = plan[i + 1]
            skip = _skip_name(concat)
            if fuse and _by_winograd(plan[i + 2] if i + 2 < len(plan) else None):
                deferred_concat = (skip, current)
                step = Step(layer, "defer", (current,), (name,), name)
            else:
                step = Step(layer, "upsample_concat", (skip, current), (concat.name, name), name)
        elif op == "concat" and deferred_concat:
            step = Step(layer, "defer", (current,), (name,), name)
        elif op == "concat" and steps and steps[-1].kernel == "upsample_concat":
            step = Step(layer, "alias", (name,), (name,), name)        # written whole by the upsample
        elif op == "concat":
            step = Step(layer, "concat_channels", (_skip_name(layer), current), (name,), name)
        else:
            step = Step(layer, op, (current,), (name,), name)
        steps.append(step)
        current = step.shows if step.kernel in ("group_norm_coefficients", "defer") else step.outputs[0]
    return _with_liveness(steps)


def _by_winograd(layer: Layer | None) -> bool:
    """Whether `layer` is a dense 3x3 conv that runs by Winograd (and so can read a fused input)."""
    return layer is not None and layer.op == "conv3x3" and layer.in_channels >= WINOGRAD_MIN_CI


def _skip_name(concat: Layer) -> str:
    """The value a concat reads as its skip: the output of the encoder stage's save_skip layer."""
    return f"encoder.{dict([concat.extra])['skip']}"


def _with_liveness(steps: list[Step]) -> list[Step]:
    out, later = [], set()
    for step in reversed(steps):
        out.append(Step(step.layer, step.kernel, step.inputs, step.outputs, step.shows, tuple(sorted(later))))
        later |= set(step.inputs)
    return out[::-1]
