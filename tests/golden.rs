//! Data-driven golden tests: every input under `tests/data/<stage>/` has its expected
//! dump beside it. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the dumps, so a
//! change to a plan shows up as a reviewable diff.

use cnnc::analyze::{self, Mode, Options};
use cnnc::{report, Source};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the file at `expected`, or rewrites it under UPDATE_GOLDEN.
fn check(expected: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(expected.parent().unwrap()).unwrap();
        std::fs::write(expected, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(expected) {
        Ok(want) if want == actual => {}
        Ok(want) => {
            let line =
                want.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(want.lines().count().min(actual.lines().count()));
            failures.push(format!(
                "{} differs at line {}:\n  want: {}\n  got:  {}",
                expected.display(),
                line + 1,
                want.lines().nth(line).unwrap_or("<eof>"),
                actual.lines().nth(line).unwrap_or("<eof>")
            ));
        }
        Err(_) => failures.push(format!("{} is missing (run with UPDATE_GOLDEN=1)", expected.display())),
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no .{ext} files in {}", dir.display());
    v
}

fn source(path: &Path) -> Source {
    let rel = path.strip_prefix(root()).unwrap().display().to_string();
    Source::new(rel, std::fs::read_to_string(path).unwrap())
}

fn finish(failures: Vec<String>) {
    assert!(failures.is_empty(), "{} golden mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// Every chain spec: its JSON plan in the forward and backward modes, and the lower
/// table in every mode; every graph spec: its graph table in the forward and backward modes.
#[test]
fn spec_plans() {
    let mut failures = Vec::new();
    for spec in files(&root().join("specs"), "cnn") {
        let stem = spec.file_stem().unwrap().to_string_lossy().to_string();
        let model = cnnc::load(&spec, cnnc::InputSize::Declared).unwrap_or_else(|e| panic!("{e}"));
        if !model.is_source_chain() {
            // A graph (ResNet, MobileNetV2, DenseNet): its graph tables; its plans equal
            // those of torch's exports (tests/dsl_graphs.rs).
            let mut tables = String::new();
            for mode in [Mode::Forward, Mode::Backward] {
                let req = cnnc::GraphRequest {
                    opts: Options { mode, std_cap: None },
                    analysis: analyze::Analysis::Paper,
                    branch_scale: 1.0,
                    batch: None,
                };
                tables.push_str(&cnnc::lower_report(&model.graph, req).unwrap_or_else(|e| panic!("{stem}: {e}")));
                tables.push('\n');
            }
            check(&root().join(format!("tests/data/lower/{stem}.txt")), &tables, &mut failures);
            continue;
        }
        let net = source(&spec).network().unwrap_or_else(|e| panic!("{e}"));
        for mode in [Mode::Forward, Mode::Backward] {
            let plan = cnnc::plan(&net, Options { mode, std_cap: None }).unwrap();
            check(&root().join(format!("tests/data/plans/{stem}.{}.json", mode.name())), &plan.to_json(), &mut failures);
        }
        let mut tables = String::new();
        for mode in Mode::ALL {
            let analysis = analyze::analyze(&net, Options { mode, std_cap: None }).unwrap();
            tables.push_str(&report::lower_table(&net, &analysis, mode));
            tables.push('\n');
        }
        check(&root().join(format!("tests/data/lower/{stem}.txt")), &tables, &mut failures);
    }
    finish(failures);
}

/// The position-resolved analysis of F34: its JSON plans (which record the analysis and
/// the range of each predicted map) and its lower tables.
#[test]
fn map_analysis_plans() {
    let mut failures = Vec::new();
    let net = source(&root().join("specs/f34.cnn")).network().unwrap();
    let mut tables = String::new();
    for mode in [Mode::Forward, Mode::Backward] {
        let opts = Options { mode, std_cap: None };
        let plan = cnnc::plan_with(&net, opts, analyze::Analysis::Map).unwrap();
        assert_eq!(plan.analysis, "map");
        check(&root().join(format!("tests/data/plans/f34.{}.map.json", mode.name())), &plan.to_json(), &mut failures);
        let analysis = analyze::analyze_with(&net, opts, analyze::Analysis::Map).unwrap();
        tables.push_str(&report::lower_table(&net, &analysis, mode));
        tables.push('\n');
    }
    check(&root().join("tests/data/lower/f34.map.txt"), &tables, &mut failures);
    finish(failures);
}

/// The reference code's cap, in YAML, for F34.
#[test]
fn capped_yaml_plan() {
    let mut failures = Vec::new();
    let net = source(&root().join("specs/f34.cnn")).network().unwrap();
    let plan = cnnc::plan(&net, Options { mode: Mode::Backward, std_cap: Some(1.05) }).unwrap();
    assert!(plan.summary.capped_layers > 0, "a cap of 1.05 bites on F34's max-pooled first layer");
    check(&root().join("tests/data/plans/f34.backward.cap1.05.yaml"), &plan.to_yaml(), &mut failures);
    finish(failures);
}

/// Front-end fixtures that must compile: their graph dump and lower table (the graph
/// table for a graph).
#[test]
fn dsl_ok() {
    let mut failures = Vec::new();
    for input in files(&root().join("tests/data/dsl/ok"), "cnn") {
        let src = source(&input);
        let graph = src.graph().unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let model = cnnc::load(&input, cnnc::InputSize::Declared).unwrap_or_else(|e| panic!("{e}"));
        if !model.is_source_chain() {
            let req = cnnc::GraphRequest {
                opts: Options { mode: Mode::Forward, std_cap: None },
                analysis: analyze::Analysis::Paper,
                branch_scale: 1.0,
                batch: None,
            };
            let table = cnnc::lower_report(&graph, req).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            check(&input.with_extension("out"), &format!("{}\n{table}", report::graph_table(&graph)), &mut failures);
            continue;
        }
        let net = cnnc::network(&graph, Some(&src)).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let analysis = analyze::analyze(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
        let dump = format!("{}\n{}", report::graph_table(&graph), report::lower_table(&net, &analysis, Mode::Forward));
        check(&input.with_extension("out"), &dump, &mut failures);
    }
    finish(failures);
}

/// Front-end fixtures that must fail: all their errors, rendered. A fixture that plans
/// fails the test, under UPDATE_GOLDEN too (its dump is then left as it was).
#[test]
fn dsl_err() {
    let mut failures = Vec::new();
    for input in files(&root().join("tests/data/dsl/err"), "cnn") {
        let src = source(&input);
        match src.network().and_then(|net| cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None })) {
            Ok(_) => failures.push(format!("{} plans: an error fixture must be rejected", input.display())),
            Err(e) => check(&input.with_extension("err"), &format!("{e}\n"), &mut failures),
        }
    }
    finish(failures);
}
