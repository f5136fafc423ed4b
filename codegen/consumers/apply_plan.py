"""Apply a cnnc initialization plan (format cnnc-plan/1) to a PyTorch model.

    python apply_plan.py PLAN.json            # validate the plan, print its layers
    python -c 'import apply_plan; ...'        # or, in your code:

    import torch, apply_plan
    plan = apply_plan.load_plan("f34.plan.json")   # from `cnnc plan specs/f34.cnn`
    apply_plan.apply_plan(model, plan, generator=torch.Generator().manual_seed(0))

What it does, for every layer of the plan: `nn.init.normal_(weight, mean, std)` with the
plan's mean and std, and `nn.init.zeros_` on the layer's bias when the model has one.

Which parameter is which (the name-matching rule):
  1. By name: when every plan weight name (e.g. "0.weight") is a key of
     `model.state_dict()`, each plan layer initializes the parameter of that name, and
     its bias the parameter named by the plan's bias name.
  2. By order, otherwise: the plan's layers, in order, are paired with the model's weight
     parameters in `model.named_parameters()` order, where a weight parameter is one whose
     name ends in "weight" and that has at least 2 dimensions (conv and linear weights;
     norm-layer weights are 1-D and skipped). The bias is the parameter with the weight's
     name, "weight" replaced by "bias", when it exists.
  Either way the counts must agree and every shape must equal the plan's, else nothing is
  changed and a PlanMismatch names the pair.

The plan is validated against specs/plan.schema.json when the `jsonschema` package is
importable (the schema is looked up beside this file's repository, or passed explicitly).
"""

import json
import os
import sys

SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "specs", "plan.schema.json")
FORMAT = "cnnc-plan/1"


class PlanMismatch(ValueError):
    """The plan does not fit the model, or is not a cnnc plan."""


# --- begin rules (emitted verbatim by `cnnc emit pytorch-init`) ---
def validate_plan(plan, schema=None):
    """Checks the plan's format and, when jsonschema is importable and a schema is given
    (a dict), validates the plan against it. Returns the plan."""
    if plan.get("format") != FORMAT:
        raise PlanMismatch("not a %s plan (format %r)" % (FORMAT, plan.get("format")))
    if schema is not None:
        try:
            import jsonschema
        except ImportError:
            return plan
        jsonschema.validate(plan, schema)
    return plan


def match_parameters(model, plan):
    """Pairs each plan layer with the model's parameters by the rule of this module's doc.
    Returns [(plan_layer, weight_name, bias_name or None)]."""
    params = dict(model.named_parameters())
    layers = plan["layers"]
    if all(l["weight"]["name"] in params for l in layers):
        pairs = []
        for l in layers:
            bias = l["bias"]["name"] if l.get("bias") else None
            pairs.append((l, l["weight"]["name"], bias if bias in params else None))
    else:
        weights = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
        if len(weights) != len(layers):
            raise PlanMismatch("names differ and the plan has %d weight layers, the model %d weight parameters" % (len(layers), len(weights)))
        pairs = []
        for l, w in zip(layers, weights):
            bias = w[: -len("weight")] + "bias"
            pairs.append((l, w, bias if bias in params else None))
    for l, w, _ in pairs:
        if list(params[w].shape) != list(l["weight"]["shape"]):
            raise PlanMismatch("plan %r has shape %s, model parameter %r %s" % (l["weight"]["name"], l["weight"]["shape"], w, list(params[w].shape)))
    return pairs


def apply_plan(model, plan, generator=None):
    """Initializes the model in place from the plan: normal_(mean, std) weights, zero
    biases. Returns the (plan name, model name, std) triples applied."""
    import torch
    from torch import nn

    params = dict(model.named_parameters())
    applied = []
    with torch.no_grad():
        for l, w, b in match_parameters(model, plan):
            kw = {} if generator is None else {"generator": generator}
            nn.init.normal_(params[w], mean=l["weight"]["mean"], std=l["weight"]["std"], **kw)
            if b is not None:
                nn.init.zeros_(params[b])
            applied.append((l["weight"]["name"], w, l["weight"]["std"]))
    return applied
# --- end rules ---


def load_plan(path, schema_path=SCHEMA):
    """Reads a plan (JSON) and validates it (against the schema when jsonschema is importable
    and the schema file exists)."""
    with open(path) as f:
        plan = json.load(f)
    schema = None
    if schema_path and os.path.exists(schema_path):
        with open(schema_path) as f:
            schema = json.load(f)
    return validate_plan(plan, schema)


def main(argv):
    if len(argv) not in (2, 3):
        print("usage: apply_plan.py PLAN.json [SCHEMA.json]", file=sys.stderr)
        return 2
    plan = load_plan(argv[1], argv[2] if len(argv) == 3 else SCHEMA)
    print("%s, mode %s, input %s: %d layers" % (plan["network"], plan["mode"], plan["input_shape"], len(plan["layers"])))
    for l in plan["layers"]:
        print("  %-24s %-20s std %.6g" % (l["weight"]["name"], l["weight"]["shape"], l["weight"]["std"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
