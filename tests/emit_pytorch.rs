//! `cnnc emit pytorch-init`: a Python module holding `python/cnnc/_apply.py`'s
//! rules verbatim and the plan as JSON (CI runs no Python; the consumer is exercised by
//! hand, see the README).

use cnnc::analyze::{Mode, Options};
use cnnc::Source;
use std::process::Command;

fn f34_plan() -> cnnc::plan::Plan {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn")).unwrap();
    let net = Source::new("specs/f34.cnn", text).network().unwrap();
    cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap()
}

#[test]
fn module_embeds_the_plan_and_the_rules() {
    let plan = f34_plan();
    let py = cnnc::emit::pytorch::init_module(&plan, "specs/f34.cnn").unwrap();
    let start = py.find("json.loads(r'''").unwrap() + "json.loads(r'''".len();
    let end = start + py[start..].find("'''").unwrap();
    assert_eq!(&py[start..end], plan.to_json());
    let consumer = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/python/cnnc/_apply.py")).unwrap();
    for f in ["def validate_plan(", "def match_parameters(", "def apply_plan("] {
        let body = &consumer[consumer.find(f).unwrap()..];
        let end = ["\n\n\n", "\n# ---"].iter().filter_map(|m| body.find(m)).min().unwrap();
        let body = &body[..end];
        assert!(py.contains(body), "{f} is not emitted verbatim");
    }
    assert!(py.contains("def apply(model, generator=None):"));
}

#[test]
fn cli_prints_the_module() {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["emit", "pytorch-init", "specs/f34.cnn", "--mode", "forward"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), cnnc::emit::pytorch::init_module(&f34_plan(), "specs/f34.cnn").unwrap());
}

/// A graph (ResNet-18 with BatchNorm): the module embeds its cnnc-plan/2, BatchNorm
/// constants included, at the branch scale asked for.
#[test]
fn a_graph_module_embeds_its_graph_plan() {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["emit", "pytorch-init", "specs/resnet18.cnn", "--mode", "forward", "--branch-scale", "0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py = String::from_utf8(out.stdout).unwrap();
    let start = py.find("json.loads(r'''").unwrap() + "json.loads(r'''".len();
    let end = start + py[start..].find("'''").unwrap();
    let plan = cnnc::plan::Plan::parse(&py[start..end], false).unwrap();
    assert_eq!(plan.format, "cnnc-plan/2");
    assert_eq!(plan.branch_scale, Some(0.0));
    let norms = plan.batch_norms.unwrap();
    assert_eq!(norms.len(), 20);
    assert!(norms.iter().any(|b| b.scale.name == "layer1.0.bn2.weight" && b.scale.value == 0.0));
}
