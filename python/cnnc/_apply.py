"""Apply a cnnc initialization plan (format cnnc-plan/1 or cnnc-plan/2) to a PyTorch model.

The one applier of cnnc's plans: `cnnc.torch.init_` calls it, `codegen/consumers/apply_plan.py`
(the repository's stand-alone script) re-exports it, and `cnnc emit pytorch-init` emits the
part between the rules markers below verbatim. It imports torch only to apply a plan.

    import torch
    from cnnc._apply import apply_plan
    apply_plan(model, plan_dict, generator=torch.Generator().manual_seed(0))

The formats: `cnnc plan` writes cnnc-plan/1 for a chain (a .cnn file, a chain-shaped ONNX
model) and cnnc-plan/2 for a graph (ResNets, MobileNets, DenseNets: Add, Concat,
BatchNormalization). /2 is /1 plus the top-level `batch_norms` (what to set each BatchNorm's
scale and shift to), `joins` and `branch_scale`, and per layer `reads`, `residual_last` and
`normalized_by`; of these only `batch_norms` is applied, the rest is information.

What it does:
  - for every layer of the plan, `nn.init.normal_(weight, mean, std)` with the plan's mean
    and std, and `nn.init.zeros_` on the layer's bias when the model has one;
  - for every entry of a /2 plan's `batch_norms`, `nn.init.constant_` on the parameter its
    `scale.name` names (the BatchNorm's weight, e.g. "layer1.0.bn2.weight") with
    `scale.value`, and on the one `shift.name` names (its bias) with `shift.value`.
    Both parameters must have the entry's shape: [channels], or [C, H, W] for a LayerNorm
    over (C, H, W) (`mode` "layer"; GroupNorm is "group:G", InstanceNorm "instance");
  - for every layer whose weight the network standardizes with a per-filter gain parameter
    (NF-ResNets' ScaledStdConv2d: the layer's `standardized.gain_param`), `nn.init.constant_`
    on that parameter with the plan's value: the stored weight's scale cancels in the
    standardization, the gain is what reaches the signal.

Which parameter is which (the name-matching rule):
  1. By name: when every plan weight name (e.g. "0.weight", "layer1.0.conv1.weight") is a
     key of `model.named_parameters()`, each plan layer initializes the parameter of that
     name, and its bias the parameter named by the plan's bias name.
  2. By order, otherwise, and for cnnc-plan/1 plans only (a /2 plan is applied by name, or
     not at all): the plan's layers, in order, are paired with the model's weight
     parameters in `model.named_parameters()` order, where a weight parameter is one whose
     name ends in "weight" and that has at least 2 dimensions (conv and linear weights;
     norm-layer weights are 1-D and skipped). The bias is the parameter with the weight's
     name, "weight" replaced by "bias", when it exists.
  3. A plan bias (by name) that is not a parameter of the model is skipped when it belongs
     to the module of its layer's weight ("layer1.0.conv1.bias" for "layer1.0.conv1.weight")
     and that module has no bias (a conv with bias=False: the plan's bias is zeros anyway).
     That is what a plan from a TorchScript export with BatchNorm folded into the convs
     holds, applied to the unfolded model. Likewise a batch-norm scale or shift that is not
     a parameter is skipped when its module has none (affine=False) and the plan's value is
     what such a module computes anyway (scale 1, shift 0). Skipped parameters are listed
     in the result's `skipped` (and printed with verbose=True).
  Batch norms are matched by name only. Every count, name and shape is checked before
  anything is changed: on a mismatch nothing is changed and a PlanMismatch names the entry.

validate_plan also validates against a JSON Schema (a dict) when one is given and the
`jsonschema` package is importable (codegen/consumers/apply_plan.py's load_plan passes
specs/plan.schema.json). A /2 plan is validated without the keys /2 adds that the schema does not list (a schema
written for /1). The module needs torch only to apply a plan, not to validate one.
"""

FORMAT = "cnnc-plan/1"  # the chain format; FORMATS (in the rules) lists every format accepted


class PlanMismatch(ValueError):
    """The plan does not fit the model, or is not a cnnc plan."""


# --- begin rules (emitted verbatim by `cnnc emit pytorch-init`) ---
FORMATS = ("cnnc-plan/1", "cnnc-plan/2")
# What cnnc-plan/2 adds to /1: top-level keys, and keys of a layer.
PLAN2_KEYS = ("batch_norms", "joins", "branch_scale", "batch")
PLAN2_LAYER_KEYS = ("reads", "residual_last", "normalized_by")


class Applied(list):
    """What apply_plan did: a list of (plan name, model name, std) for the weights, with
    `batch_norms`, a list of (plan entry name, scale parameter, scale value, shift
    parameter, shift value), a parameter None when skipped, `gains`, a list of (plan weight
    name, gain parameter, value) for standardized weights, and `skipped`, a list of
    (plan parameter name, why) for the plan parameters left alone."""

    def __init__(self, items=()):
        list.__init__(self, items)
        self.batch_norms = []
        self.gains = []
        self.skipped = []


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _is_shape(x):
    return isinstance(x, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in x)


def _owner(name):
    """The module a parameter name belongs to: "layer1.0.conv1" for "layer1.0.conv1.bias"
    ("" for the model's own parameters); and the parameter's name in it."""
    owner, _, leaf = name.rpartition(".")
    return owner, leaf


def _schema_view(plan, schema):
    """The plan as a schema that may predate cnnc-plan/2 should see it: a /2 plan without
    the keys /2 adds that the schema does not list."""
    if plan.get("format") == "cnnc-plan/1":
        return plan
    top = schema.get("properties", {})
    known = schema.get("$defs", {}).get("PlanLayer", {}).get("properties", {})
    view = {k: v for k, v in plan.items() if k in top or k not in PLAN2_KEYS}
    if isinstance(plan.get("layers"), list):
        view["layers"] = [{k: v for k, v in l.items() if k in known or k not in PLAN2_LAYER_KEYS} if isinstance(l, dict) else l for l in plan["layers"]]
    return view


def validate_plan(plan, schema=None):
    """Checks the plan's format and the entries apply_plan reads (a PlanMismatch names the
    first bad one) and, when jsonschema is importable and a schema is given (a dict),
    validates the plan against it (a /2 plan as _schema_view shows it). Returns the plan."""
    fmt = plan.get("format") if isinstance(plan, dict) else None
    if fmt not in FORMATS:
        raise PlanMismatch("not a %s plan (format %r)" % (" or ".join(FORMATS), fmt))
    if not isinstance(plan.get("layers"), list):
        raise PlanMismatch("the plan's layers are not a list")
    for i, l in enumerate(plan["layers"]):
        w = l.get("weight") if isinstance(l, dict) else None
        ok = isinstance(w, dict) and isinstance(w.get("name"), str) and _is_shape(w.get("shape"))
        if not (ok and _is_number(w.get("mean")) and _is_number(w.get("std")) and w["std"] >= 0):
            raise PlanMismatch("plan layer %d (%r): its weight needs a name, a shape, a mean and a std >= 0" % (i, l.get("name") if isinstance(l, dict) else l))
        b = l.get("bias")
        if b is not None and not (isinstance(b, dict) and isinstance(b.get("name"), str) and _is_shape(b.get("shape", []))):
            raise PlanMismatch("plan layer %d (%r): its bias needs a name and a shape" % (i, l.get("name")))
    if fmt == "cnnc-plan/2":
        norms = plan.get("batch_norms", [])
        if not isinstance(norms, list):
            raise PlanMismatch("the plan's batch_norms are not a list")
        for i, e in enumerate(norms):
            name = e.get("name") if isinstance(e, dict) else None
            c = e.get("channels") if isinstance(e, dict) else None
            if not (isinstance(name, str) and isinstance(c, int) and not isinstance(c, bool) and c > 0):
                raise PlanMismatch("plan batch norm %d (%r): needs a name and channels > 0" % (i, name))
            for role in ("scale", "shift"):
                p = e.get(role)
                if not (isinstance(p, dict) and isinstance(p.get("name"), str) and _is_number(p.get("value")) and _is_shape(p.get("shape", [c]))):
                    raise PlanMismatch("plan batch norm %r: its %s needs a name, a shape and a finite value" % (name, role))
    if schema is not None:
        try:
            import jsonschema
        except ImportError:
            return plan
        jsonschema.validate(_schema_view(plan, schema), schema)
    return plan


def match_parameters(model, plan, skipped=None):
    """Pairs each plan layer with the model's parameters by the rule of this module's doc.
    Returns [(plan_layer, weight_name, bias_name or None)]; plan biases skipped by rule 3
    are appended to `skipped` (when it is a list) as (plan bias name, why)."""
    params = dict(model.named_parameters())
    layers = plan["layers"]
    pairs = []
    if all(l["weight"]["name"] in params for l in layers):
        modules = None
        for l in layers:
            w = l["weight"]["name"]
            bias = l["bias"]["name"] if l.get("bias") else None
            if bias is not None and bias not in params:
                if modules is None:
                    modules = dict(model.named_modules())
                owner, _ = _owner(w)
                module = modules.get(owner)
                if _owner(bias) != (owner, "bias") or module is None or getattr(module, "bias", None) is not None:
                    raise PlanMismatch("plan layer %r: its bias %r is not a parameter of the model, and not the bias of a module %r without one" % (l.get("name"), bias, owner))
                if isinstance(skipped, list):
                    skipped.append((bias, "module %r has no bias (bias=False); the plan's is zeros" % owner))
                bias = None
            pairs.append((l, w, bias))
    elif plan.get("format", FORMATS[0]) != "cnnc-plan/1":
        missing = [l for l in layers if l["weight"]["name"] not in params]
        raise PlanMismatch("plan layer %r: weight %r is not a parameter of the model (nor are %d more of the plan's %d weights; a %s plan is applied by name only)" % (missing[0].get("name"), missing[0]["weight"]["name"], len(missing) - 1, len(layers), plan.get("format")))
    else:
        weights = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
        if len(weights) != len(layers):
            raise PlanMismatch("names differ and the plan has %d weight layers, the model %d weight parameters" % (len(layers), len(weights)))
        for l, w in zip(layers, weights):
            bias = w[: -len("weight")] + "bias"
            pairs.append((l, w, bias if bias in params else None))
    for l, w, b in pairs:
        if list(params[w].shape) != list(l["weight"]["shape"]):
            raise PlanMismatch("plan %r has shape %s, model parameter %r %s" % (l["weight"]["name"], l["weight"]["shape"], w, list(params[w].shape)))
        if b is not None and l.get("bias") and "shape" in l["bias"] and list(params[b].shape) != list(l["bias"]["shape"]):
            raise PlanMismatch("plan %r has shape %s, model parameter %r %s" % (l["bias"]["name"], l["bias"]["shape"], b, list(params[b].shape)))
    return pairs


def match_batch_norms(model, plan, skipped=None):
    """Pairs each batch-norm entry of a /2 plan with the model's parameters, by name
    (rule 3 of this module's doc for the ones it lacks). Returns [(entry, scale_name or
    None, shift_name or None)] ([] for a /1 plan); skipped ones are appended to `skipped`
    (when it is a list) as (plan parameter name, why)."""
    if plan.get("format") != "cnnc-plan/2":
        return []
    params = dict(model.named_parameters())
    modules = None
    matched = []
    for e in plan.get("batch_norms", []):
        names = []
        for role, leaf, neutral in (("scale", "weight", 1.0), ("shift", "bias", 0.0)):
            p = e[role]
            n = p["name"]
            if not n:
                # The normalization has no such parameter (a layer scale has no shift).
                names.append(None)
                continue
            if n in params:
                shape = list(params[n].shape)
                # [channels], or a LayerNorm's element-wise [C, H, W]: the entry's shape.
                if shape[:1] != [e["channels"]] or shape != list(p.get("shape", [e["channels"]])):
                    raise PlanMismatch("plan batch norm %r: %s %r has %d channels (shape %s), model parameter %r %s" % (e["name"], role, n, e["channels"], p.get("shape"), n, shape))
                names.append(n)
                continue
            if modules is None:
                modules = dict(model.named_modules())
            owner, own_leaf = _owner(n)
            module = modules.get(owner)
            lacks = own_leaf == leaf and module is not None and hasattr(module, leaf) and getattr(module, leaf) is None
            if not lacks or p["value"] != neutral:
                raise PlanMismatch("plan batch norm %r: its %s %r is not a parameter of the model%s" % (e["name"], role, n, " (module %r has no %s, but the plan sets %r, not %r)" % (owner, leaf, p["value"], neutral) if lacks else ""))
            if isinstance(skipped, list):
                skipped.append((n, "module %r has no %s (affine=False); the plan's is %r" % (owner, leaf, neutral)))
            names.append(None)
        matched.append((e, names[0], names[1]))
    return matched


def match_gain_parameters(model, plan):
    """A /2 plan's standardized weights with a per-filter gain parameter (NF-ResNets'
    ScaledStdConv2d: `standardized.gain_param`): [(plan_layer, parameter name, value)]. The
    stored weight's scale cancels in the standardization; the gain parameter is what sets
    the effective weight, so it is set to the plan's value (every element). A gain
    parameter the model does not have is a PlanMismatch."""
    params = dict(model.named_parameters())
    out = []
    for l in plan.get("layers", []):
        g = (l.get("standardized") or {}).get("gain_param")
        if not g:
            continue
        name, value = g.get("name"), g.get("value")
        if not isinstance(name, str) or not _is_number(value):
            raise PlanMismatch("layer %r: standardized.gain_param needs a name and a numeric value" % l["weight"]["name"])
        if name not in params:
            raise PlanMismatch("layer %r: the gain parameter %r is not a parameter of the model" % (l["weight"]["name"], name))
        out.append((l, name, float(value)))
    return out


def apply_plan(model, plan, generator=None, verbose=False):
    """Initializes the model in place from the plan: normal_(mean, std) weights, zero
    biases, and for a /2 plan constant_ batch-norm scales and shifts. Everything is matched
    and checked first; on a mismatch a PlanMismatch is raised and nothing is changed.
    Returns an Applied: the (plan name, model name, std) triples applied, with its
    `batch_norms` and `skipped` lists; verbose=True prints them."""
    import torch
    from torch import nn

    validate_plan(plan)
    skipped = []
    pairs = match_parameters(model, plan, skipped)
    norms = match_batch_norms(model, plan, skipped)
    gains = match_gain_parameters(model, plan)
    seen = {}
    for entry, names in [(l["weight"]["name"], (w, b)) for l, w, b in pairs] + [(e["name"], (s, t)) for e, s, t in norms] + [(l["weight"]["name"] + " gain", (n,)) for l, n, _ in gains]:
        for n in names:
            if n is not None and seen.setdefault(n, entry) is not entry:
                raise PlanMismatch("plan entries %r and %r both set model parameter %r" % (seen[n], entry, n))
    params = dict(model.named_parameters())
    kw = {} if generator is None else {"generator": generator}
    applied = Applied()
    with torch.no_grad():
        for l, w, b in pairs:
            nn.init.normal_(params[w], mean=l["weight"]["mean"], std=l["weight"]["std"], **kw)
            if b is not None:
                nn.init.zeros_(params[b])
            applied.append((l["weight"]["name"], w, l["weight"]["std"]))
        for e, s, t in norms:
            if s is not None:
                nn.init.constant_(params[s], e["scale"]["value"])
            if t is not None:
                nn.init.constant_(params[t], e["shift"]["value"])
            applied.batch_norms.append((e["name"], s, e["scale"]["value"], t, e["shift"]["value"]))
        for l, n, v in gains:
            nn.init.constant_(params[n], v)
            applied.gains.append((l["weight"]["name"], n, v))
    applied.skipped = skipped
    if verbose:
        print("cnnc plan (%s): %d weights, %d batch norms set, %d plan parameters skipped" % (plan["format"], len(applied), len(applied.batch_norms), len(skipped)))
        for p, w, std in applied:
            print("  %-32s normal_(std %.6g)%s" % (w, std, "" if p == w else "   (plan %s)" % p))
        for name, s, sv, t, tv in applied.batch_norms:
            print("  %-32s constant_(%g), %s constant_(%g)   (%s)" % (s or "-", sv, t or "-", tv, name))
        for w, n, v in applied.gains:
            print("  %-32s constant_(%g)   (the standardized weight %s's gain)" % (n, v, w))
        for n, why in skipped:
            print("  skipped %s: %s" % (n, why))
    return applied
# --- end rules ---
