//! `cnnc emit candle`: the checked-in generated crates are what the generator writes
//! today (`UPDATE_CODEGEN=1 cargo test --test emit_candle` rewrites them), the generated
//! Tiny model gives `cnnc train`'s model's output bit for bit (its own tests, compiled in
//! here from `codegen/tiny/src/model.rs`), and what the generator cannot express is an
//! error naming the layer.

use cnnc::analyze::{Mode, Options};
use cnnc::emit::candle::{self, CandleOptions};
use cnnc::Source;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The generated Tiny model with its tests (`layers_are_the_plan`, `same_output_as_cnnc`).
// The generated file keeps the generator's formatting (rustfmt defaults): not this crate's.
#[rustfmt::skip]
#[path = "../codegen/tiny/src/model.rs"]
#[allow(dead_code)] // INPUT and OUTPUTS are for the generated training binary
mod tiny_model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Generates the crate for `spec` as `codegen/<name>` is generated (a workspace member
/// that finds cnnc at `../..`).
fn generate(spec: &str, name: &str) -> Vec<cnnc::emit::File> {
    let text = std::fs::read_to_string(root().join(spec)).unwrap();
    let net = Source::new(spec, text.clone()).network().unwrap();
    let plan = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let opts = CandleOptions { name: name.into(), spec_path: spec.into(), spec_text: text, cnnc_path: "../..".into(), standalone: false };
    candle::generate(&net, &plan, &opts).unwrap()
}

fn check_crate(dir: &Path, files: &[cnnc::emit::File]) -> Vec<String> {
    if std::env::var_os("UPDATE_CODEGEN").is_some() {
        cnnc::emit::write_files(dir, files).unwrap();
        return Vec::new();
    }
    let mut failures = Vec::new();
    for f in files {
        let path = dir.join(&f.path);
        match std::fs::read_to_string(&path) {
            Ok(want) if want == f.text => {}
            Ok(want) => {
                let line =
                    want.lines().zip(f.text.lines()).position(|(a, b)| a != b).unwrap_or(want.lines().count().min(f.text.lines().count()));
                failures.push(format!(
                    "{} differs from the generator's output at line {}:\n  checked in: {}\n  generated:  {}",
                    path.display(),
                    line + 1,
                    want.lines().nth(line).unwrap_or("<eof>"),
                    f.text.lines().nth(line).unwrap_or("<eof>")
                ));
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    failures
}

#[test]
fn checked_in_crates_are_the_generators_output() {
    let mut failures = check_crate(&root().join("codegen/f34"), &generate("specs/f34.cnn", "f34"));
    failures.extend(check_crate(&root().join("codegen/tiny"), &generate("codegen/specs/tiny.cnn", "tiny")));
    assert!(failures.is_empty(), "{}\n(regenerate with UPDATE_CODEGEN=1 cargo test --test emit_candle)", failures.join("\n"));
}

#[test]
fn generated_files_are_deterministic_and_complete() {
    let a = generate("codegen/specs/tiny.cnn", "tiny");
    let b = generate("codegen/specs/tiny.cnn", "tiny");
    assert_eq!(a, b);
    let paths: Vec<&str> = a.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["Cargo.toml", "src/lib.rs", "src/main.rs", "src/model.rs"]);
    // A member of cnnc's workspace has no [workspace] of its own; a standalone crate has.
    assert!(!a[0].text.contains("[workspace]"));
    assert!(a[2].text.contains("use tiny::model::{Model, INPUT, OUTPUTS};"));
}

fn generate_text(text: &str, name: &str) -> Result<Vec<cnnc::emit::File>, cnnc::emit::EmitError> {
    let net = Source::new("t.cnn", text).network().unwrap();
    let plan = cnnc::plan(&net, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let opts =
        CandleOptions { name: name.into(), spec_path: "t.cnn".into(), spec_text: text.into(), cnnc_path: "/cnnc".into(), standalone: true };
    candle::generate(&net, &plan, &opts)
}

#[test]
fn unsupported_layers_are_errors_naming_the_layer() {
    // Per-axis stride and dilation run in cnnc's conv op: generated, not refused.
    let per_axis = "network T\ninput 1x8x8\nconv(3/s2x1/p1) -> 2, relu\nconv(3x1/d1x2) -> 2\n";
    let model = &generate_text(per_axis, "t").unwrap()[3].text;
    assert!(model.contains("conv(&vb, &LAYERS[0], [2, 1], [1, 1], [1, 1, 1, 1], 1)?"), "{model}");
    assert!(model.contains("conv(&vb, &LAYERS[1], [1, 1], [1, 2], [0, 0, 0, 0], 1)?"), "{model}");
    let ok = "network T\ninput 1x8x8\nconv(3) -> 2, relu\nflatten\nlinear -> 3\n";
    let e = generate_text(ok, "9lives").unwrap_err().to_string();
    assert!(e.contains("`9lives` is not a valid crate name"), "{e}");
    let files = generate_text(ok, "t").unwrap();
    assert!(files[0].text.contains("cnnc = { path = \"/cnnc\" }") && files[0].text.contains("\n[workspace]\n"));
}

#[test]
fn spec_text_is_embedded_verbatim() {
    let text = "# a \"## quoted\"# comment\nnetwork T\ninput 1x4x4\nconv(1) -> 2\nflatten\nlinear -> 2\n";
    let files = generate_text(text, "t").unwrap();
    assert!(files[3].text.contains(&format!("pub const SPEC: &str = r###\"{text}\"###;")), "{}", files[3].text);
}

#[test]
fn cli_writes_the_crate() {
    let dir = std::env::temp_dir().join(format!("cnnc-emit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args([
            "emit",
            "candle",
            "codegen/specs/tiny.cnn",
            "--mode",
            "forward",
            "--name",
            "tiny",
            "--cnnc-path",
            "../..",
            "--workspace-member",
            "-o",
        ])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in generate("codegen/specs/tiny.cnn", "tiny") {
        assert_eq!(std::fs::read_to_string(dir.join(&f.path)).unwrap(), f.text, "{}", f.path);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(["emit", "candle", "tests/data/onnx/ok/missing.onnx", "-o"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("emit candle takes a .cnn description"));
    std::fs::remove_dir_all(&dir).unwrap();
}
