"""Apply a cnnc initialization plan (format cnnc-plan/1 or cnnc-plan/2) to a PyTorch model,
from a checkout of cnnc, without installing the Python package.

    python apply_plan.py PLAN.json [SCHEMA.json]   # validate the plan, print its layers

    import torch, apply_plan
    plan = apply_plan.load_plan("f34.plan.json")   # from `cnnc plan specs/f34.cnn`
    apply_plan.apply_plan(model, plan, generator=torch.Generator().manual_seed(0))

A thin wrapper: the applier is the Python package's, `python/cnnc/_apply.py` (its docstring
has the name-matching rule), loaded from this checkout by path so that neither the package
nor its compiled extension needs to be installed. With the package installed, the same
functions are `cnnc._apply.*`, and `cnnc.torch.init_(model, input_shape=...)` exports, plans
and applies in one call.
"""

import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.path.join(HERE, "..", "..", "specs", "plan.schema.json")
_APPLY = os.path.join(HERE, "..", "..", "python", "cnnc", "_apply.py")

_spec = importlib.util.spec_from_file_location("cnnc_apply_plan_rules", _APPLY)
_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rules)

FORMAT = _rules.FORMAT
FORMATS = _rules.FORMATS
PlanMismatch = _rules.PlanMismatch
Applied = _rules.Applied
validate_plan = _rules.validate_plan
match_parameters = _rules.match_parameters
match_batch_norms = _rules.match_batch_norms
apply_plan = _rules.apply_plan


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
    norms = plan.get("batch_norms", []) if plan["format"] == "cnnc-plan/2" else []
    extra = ", %d batch norms, branch scale %s" % (len(norms), plan.get("branch_scale")) if plan["format"] == "cnnc-plan/2" else ""
    print("%s (%s), mode %s, input %s: %d layers%s" % (plan["network"], plan["format"], plan["mode"], plan["input_shape"], len(plan["layers"]), extra))
    for l in plan["layers"]:
        b = " + %s" % l["bias"]["name"] if l.get("bias") else ""
        print("  %-32s %-20s std %.6g%s" % (l["weight"]["name"], l["weight"]["shape"], l["weight"]["std"], b))
    for e in norms:
        print("  %-32s scale %s = %g, shift %s = %g (%s)" % (e["name"], e["scale"]["name"], e["scale"]["value"], e["shift"]["name"], e["shift"]["value"], e.get("mode")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
