//! The command line: exit codes, error output, atomic writes, and the checked-in
//! JSON Schema of the plan; in a plan-only build, the training commands' error.

use std::process::Command;

fn cnnc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn schema_in_specs_is_up_to_date() {
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/plan.schema.json")).unwrap();
    assert!(
        checked_in == cnnc::plan::schema_json(),
        "specs/plan.schema.json is stale: run `cargo run -- schema -o specs/plan.schema.json`"
    );
}

#[test]
fn plan_prints_json_that_round_trips() {
    let (code, out, err) = cnnc(&["plan", "specs/f34.cnn", "--mode", "forward"]);
    assert_eq!(code, 0, "{err}");
    let plan: cnnc::plan::Plan = serde_json::from_str(&out).unwrap();
    assert_eq!(plan.format, "cnnc-plan/1");
    assert_eq!(plan.summary.weight_layers, 34);
    assert_eq!(plan.summary.parameters, 21_108_362);
    assert_eq!(plan.layers[33].weight.name, "69.weight");
}

#[test]
fn yaml_output_to_a_file() {
    let dir = std::env::temp_dir().join(format!("cnnc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f34.yaml");
    let (code, out, err) = cnnc(&["plan", "specs/f34.cnn", "--mode", "backward", "--format", "yaml", "-o", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    let plan: cnnc::plan::Plan = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(plan.mode, "backward");
    // No temporary file is left beside the output.
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_exit_non_zero_with_a_located_message() {
    let (code, out, err) = cnnc(&["plan", "tests/data/dsl/err/two_pools.cnn"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("--> tests/data/dsl/err/two_pools.cnn:3:33"), "{err}");
    let (code, _, err) = cnnc(&["plan", "no/such/file.cnn"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read no/such/file.cnn"), "{err}");
    let (code, _, err) = cnnc(&["plan", "specs/f34.cnn", "--mode", "xavier", "--std-cap", "3"]);
    assert_eq!(code, 1);
    assert!(err.contains("--std-cap applies to the forward and backward modes only"), "{err}");
    let (code, _, err) = cnnc(&["inspect", "specs/f34.cnn", "--layer", "35", "--unit", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--layer 35 is out of range: F34 has layers 1 to 34"), "{err}");
    let (code, _, err) = cnnc(&["inspect", "specs/f34.cnn", "--layer", "34", "--unit", "10"]);
    assert_eq!(code, 1);
    assert!(err.contains("unit 10 is out of range"), "{err}");
}

/// `--input` on a `.cnn` file plans the network at that size: the same plan as a copy of
/// the spec whose `input` line says that size, and an error at the input line for a
/// network whose input is a vector.
#[test]
fn input_resizes_a_cnn_network_like_editing_its_spec() {
    let dir = std::env::temp_dir().join(format!("cnnc-cli-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn")).unwrap();
    assert!(spec.contains("input 3x224x224"));
    let edited = dir.join("f34_28.cnn");
    std::fs::write(&edited, spec.replace("input 3x224x224", "input 1x28x28")).unwrap();
    let (code, by_flag, err) = cnnc(&["plan", "specs/f34.cnn", "--input", "1x28x28"]);
    assert_eq!(code, 0, "{err}");
    let (code, by_edit, err) = cnnc(&["plan", edited.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (a, b): (cnnc::plan::Plan, cnnc::plan::Plan) = (serde_json::from_str(&by_flag).unwrap(), serde_json::from_str(&by_edit).unwrap());
    assert_eq!(a.input_shape, vec![1, 28, 28]);
    assert_eq!(a.input_shape, b.input_shape);
    assert_eq!(a.layers, b.layers);
    let (_, at_224, _) = cnnc(&["plan", "specs/f34.cnn"]);
    let c: cnnc::plan::Plan = serde_json::from_str(&at_224).unwrap();
    assert_ne!(a.layers, c.layers, "the input size changes the plan (ε and M depend on it)");

    let vector = dir.join("mlp.cnn");
    std::fs::write(&vector, "network MLP\ninput 784\nlinear -> 10\n").unwrap();
    let (code, _, err) = cnnc(&["plan", vector.to_str().unwrap(), "--input", "1x28x28"]);
    assert_eq!(code, 1);
    assert!(err.contains("--input needs an image input (CxHxW)") && err.contains("mlp.cnn:2:1"), "{err}");
}

#[test]
fn inspect_lists_the_index_sets() {
    let (code, out, err) = cnnc(&["inspect", "specs/f34.cnn", "--layer", "1", "--unit", "0", "--limit", "4"]);
    assert_eq!(code, 0, "{err}");
    // Corner unit of the 7×7/s2/p3 conv: 4×4 taps of 3 channels read real input.
    assert!(out.contains("s(ℓ,i)  (inputs z^(ℓ-1) read, index=(c,y,x); 48 elements, first 4 shown)"), "{out}");
    assert!(out.contains("0=(0,0,0) 1=(0,0,1) 2=(0,0,2) 3=(0,0,3)"), "{out}");
    assert!(out.contains("a(ℓ,i)"));
    // Pooled output 0 of the 3×3/s2/p1 max pool: a 2×2 window (the rest is padding).
    assert!(out.contains("t(ℓ,i)  (elements of v pooled into z_0, T = 9; 4 elements)"), "{out}");
    let (code, out, _) = cnnc(&["inspect", "specs/f34.cnn", "--layer", "2", "--unit", "57", "--backward"]);
    assert_eq!(code, 0);
    assert!(out.contains("j(ℓ,i)  (conv outputs u^(ℓ) that read it, index=(c,y,x); 576 elements"), "{out}");
}

/// The plan-only build (the default, without `--features train`) still knows the training commands: they
/// fail, whatever their arguments, with the feature they need; the rest of the CLI works.
#[cfg(not(feature = "train"))]
#[test]
fn training_commands_name_the_missing_feature() {
    for args in [
        &["train", "specs/f34.cnn", "--data", "d", "--out", "r"][..],
        &["probe", "specs/f34.cnn", "--help"],
        &["experiment"],
        &["synth-data", "d"],
    ] {
        let (code, out, err) = cnnc(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        let want = format!("error: this cnnc was built without the `train` feature: `cnnc {}` is part of the training back end", args[0]);
        assert!(err.starts_with(&want), "{args:?}: {err}");
    }
    let (code, out, _) = cnnc(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("built without the `train` feature: train, probe, experiment and synth-data are not available"), "{out}");
}

/// With the `train` feature the training commands are the real ones.
#[cfg(feature = "train")]
#[test]
fn training_commands_take_their_arguments() {
    let (code, out, _) = cnnc(&["probe", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--draws <DRAWS>"), "{out}");
    let (code, _, err) = cnnc(&["train", "specs/f34.cnn"]);
    assert_eq!(code, 1);
    assert!(err.contains("train needs --data DIR"), "{err}");
}

/// Plan files are read by one reader that checks `format`: JSON and YAML read back equal
/// to the plan written; another format, or no format, is refused with the path.
#[test]
fn plan_files_are_read_back_and_their_format_checked() {
    let dir = std::env::temp_dir().join(format!("cnnc-cli-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (code, json, err) = cnnc(&["plan", "specs/vgg16.cnn", "--mode", "backward"]);
    assert_eq!(code, 0, "{err}");
    let (code, yaml, err) = cnnc(&["plan", "specs/vgg16.cnn", "--mode", "backward", "--format", "yaml"]);
    assert_eq!(code, 0, "{err}");
    let (pj, py) = (dir.join("p.json"), dir.join("p.yml"));
    std::fs::write(&pj, &json).unwrap();
    std::fs::write(&py, &yaml).unwrap();
    let a = cnnc::plan::Plan::read(&pj).unwrap();
    assert_eq!(a, cnnc::plan::Plan::read(&py).unwrap());
    assert_eq!((a.mode.as_str(), a.layers.len()), ("backward", 16));

    let newer = dir.join("newer.json");
    std::fs::write(&newer, json.replace("\"cnnc-plan/1\"", "\"cnnc-plan/9\"")).unwrap();
    let e = cnnc::plan::Plan::read(&newer).unwrap_err().to_string();
    assert!(e.contains("newer.json") && e.contains("plan format `cnnc-plan/9` is not one this cnnc reads"), "{e}");
    let none = dir.join("none.json");
    std::fs::write(&none, "{\"layers\": []}").unwrap();
    let e = cnnc::plan::Plan::read(&none).unwrap_err().to_string();
    assert!(e.contains("no `format` field"), "{e}");
    assert!(cnnc::plan::Plan::read(&dir.join("absent.json")).unwrap_err().to_string().contains("cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn cnnc_in(dir: &std::path::Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).current_dir(dir).output().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8(out.stderr).unwrap())
}

/// Output paths are replaced only when they name a regular file (or nothing): a symbolic
/// link there is refused, never followed (its target keeps its bytes) nor replaced; a
/// FIFO or a directory is a clear error naming the path; `-o -` and `/dev/stdout` stream
/// to standard output. Every writer of the CLI (plan, export-onnx, init) goes through
/// the same function. Run as root, as users do.
#[cfg(unix)]
#[test]
fn outputs_never_follow_or_replace_links_fifos_or_directories() {
    use std::os::unix::fs::FileTypeExt;
    let dir = std::env::temp_dir().join(format!("cnnc-cli-outputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let spec = format!("{root}/tests/data/onnx/ok/exported_small.cnn");
    let model = format!("{root}/tests/data/onnx/ok/exported_small.onnx");
    let victim = dir.join("victim");
    std::fs::write(&victim, "secret").unwrap();
    let commands = |out: &str| -> [Vec<String>; 3] {
        [
            vec!["plan".into(), spec.clone(), "-o".into(), out.into()],
            vec!["export-onnx".into(), spec.clone(), "-o".into(), out.into()],
            vec!["init".into(), model.clone(), "-o".into(), out.into()],
        ]
    };
    let run = |args: &[String]| cnnc_in(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());

    std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
    std::process::Command::new("mkfifo").arg(dir.join("fifo")).status().unwrap();
    std::fs::create_dir(dir.join("folder")).unwrap();
    for (name, what) in [("link", "it is a symbolic link"), ("fifo", "it is a FIFO"), ("folder", "it is a directory")] {
        for args in commands(name) {
            let (code, out, err) = run(&args);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(out.is_empty(), "{args:?}");
            assert!(err.starts_with(&format!("error: cannot write {name}: {what}")), "{args:?}: {err}");
            assert!(!err.contains("cannot read") && !err.contains("panicked"), "{args:?}: {err}");
        }
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
    assert!(std::fs::symlink_metadata(dir.join("link")).unwrap().file_type().is_symlink());
    assert!(std::fs::symlink_metadata(dir.join("fifo")).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(dir.join("folder")).unwrap().is_dir());

    // A regular file is replaced (not written through: a hard link keeps the old bytes).
    std::fs::write(dir.join("plan.json"), "old").unwrap();
    std::fs::hard_link(dir.join("plan.json"), dir.join("hard")).unwrap();
    let (code, _, err) = run(&commands("plan.json")[0]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(dir.join("plan.json")).unwrap().contains("cnnc-plan/1"));
    assert_eq!(std::fs::read_to_string(dir.join("hard")).unwrap(), "old");

    // `-o -` and `/dev/stdout` stream: the plan, and a decodable model, on stdout.
    for out in ["-", "/dev/stdout"] {
        let (code, plan, err) = run(&commands(out)[0]);
        assert_eq!(code, 0, "{err}");
        let plan: cnnc::plan::Plan = serde_json::from_slice(&plan).unwrap();
        assert_eq!(plan.format, "cnnc-plan/1");
        let (code, bytes, err) = run(&commands(out)[1]);
        assert_eq!(code, 0, "{err}");
        cnnc::onnx::decode(cnnc::onnx::Bytes::from(bytes)).unwrap();
    }
    assert!(!dir.join("-").exists());
    // Nothing else was left in the folder (no temporary files).
    let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["fifo", "folder", "hard", "link", "plan.json", "victim"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lower_nodes_lists_every_node_with_its_moments() {
    // A graph: the input row first, then one row per node; the forward plan's conv output
    // is E[u²] = 1, the ReLU after the inference BatchNorm half of the BatchNorm's output,
    // the output's gradient the unit one.
    let (code, out, err) = cnnc(&["lower", "--nodes", "tests/data/onnx/ok/joins_and_batchnorm.onnx"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 6, "{out}");
    let col = |name: &str, k: usize| -> f64 {
        rows.iter().find(|r| r[1] == name).unwrap_or_else(|| panic!("{name} in {out}"))[k].parse().unwrap()
    };
    assert_eq!(col("input", 5), 1.0);
    assert!((col("conv", 5) - 1.0).abs() < 1e-6, "{out}");
    assert!((col("relu", 5) - 0.5 * col("bn", 5)).abs() < 1e-6, "{out}");
    assert!((col("cat", 6) - 1.0).abs() < 1e-6, "{out}");
    // A chain too; an activation fused into its max pool has no gradient of its own.
    let (code, out, err) = cnnc(&["lower", "--nodes", "specs/f34.cnn"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2 + 71, "{out}");
    assert!(out.lines().nth(4).is_some_and(|l| l.ends_with("fused")), "{out}");
}
