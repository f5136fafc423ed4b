//! Experiments: quartiles as NumPy computes them, a resumable grid on tiny data, the
//! pool (`--jobs 2` gives what a serial run gives), the out directory's owner, the batch
//! script and the status. (`tests/slurm.rs` submits the script to a real Slurm.)

use cnnc::experiment::{local, quantile};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cfg: &Path, exe: &Path, jobs: usize) -> Result<Vec<cnnc::experiment::RunResult>, cnnc::experiment::ExperimentError> {
    cnnc::experiment::run(cfg, exe, &local::Options { jobs, ..local::Options::default() })
}

#[test]
fn quartiles_match_numpy_linear_interpolation() {
    // numpy.quantile(x, [0.25, 0.5, 0.75]) with the default method="linear".
    let q = |x: &[f64]| [0.25, 0.5, 0.75].map(|p| quantile(x, p).unwrap());
    assert_eq!(q(&[1.0, 2.0, 3.0, 4.0]), [1.75, 2.5, 3.25]);
    assert_eq!(q(&[4.0, 1.0, 3.0]), [2.0, 3.0, 3.5]);
    assert_eq!(q(&[7.0]), [7.0, 7.0, 7.0]);
    let ten: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(q(&ten), [3.25, 5.5, 7.75]);
    // The paper's Table 4 shape: 10 runs, quartiles between order statistics.
    let acc = [69.92, 68.36, 69.04, 69.48, 67.0, 68.0, 69.5, 70.0, 68.5, 69.0];
    let [q1, med, q3] = q(&acc);
    assert!((q1 - 68.395).abs() < 1e-9 && (med - 69.02).abs() < 1e-9 && (q3 - 69.495).abs() < 1e-9, "{q1} {med} {q3}");
    assert_eq!(quantile(&[], 0.5), None);
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_grid_runs_resumes_and_skips_finished_runs() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cnnc"));
    let dir = std::env::temp_dir().join(format!("cnnc-experiment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let status = std::process::Command::new(exe)
        .args(["synth-data", data.to_str().unwrap(), "--classes", "2", "--per-class", "12", "--size", "8", "--seed", "4"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    write(
        &dir.join("tiny.cnn"),
        "network Tiny\ninput 3x8x8\nconv(3/p1) -> 4, relu, maxpool(2)\nconv(3/p1) -> 4, relu, global_avgpool\nlinear -> 2\n",
    );
    let config = |epochs: usize| {
        format!(
            "model: tiny.cnn\ndata: data\nepochs: {epochs}\nbatch_size: 4\nlr: 0.05\ninits: [forward, kaiming-in]\nseeds: [0, 1]\nval_split: 0.25\nout: runs\n"
        )
    };
    let cfg = dir.join("exp.yaml");
    write(&cfg, &config(1));
    let first = run(&cfg, exe, 1).unwrap();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|r| r.val_accuracy.len() == 1 && !r.diverged), "{first:?}");
    let results = std::fs::read_to_string(dir.join("runs/results.md")).unwrap();
    assert!(results.contains("| forward | 2 | 0 |") && results.contains("| kaiming-in | 2 | 0 |"), "{results}");
    assert!(std::fs::read_to_string(dir.join("runs/curves.svg")).unwrap().starts_with("<svg"));

    // Two epochs now: every run resumes from its checkpoint; epoch 1 is kept as it was.
    write(&cfg, &config(2));
    let second = run(&cfg, exe, 1).unwrap();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(b.val_accuracy.len(), 2);
        assert_eq!(a.val_accuracy[0], b.val_accuracy[0], "{} seed {} restarted instead of resuming", a.init, a.seed);
    }
    // Finished runs are skipped: nothing is rewritten.
    let metrics = dir.join("runs/forward-s0/metrics.jsonl");
    let before = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    run(&cfg, exe, 1).unwrap();
    assert_eq!(std::fs::metadata(&metrics).unwrap().modified().unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configs_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("cnnc-experiment-bad-{}", std::process::id()));
    let cfg = dir.join("bad.yaml");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [he]\nseeds: [0]\nout: runs\n");
    let e = run(&cfg, Path::new("cnnc"), 1).unwrap_err().to_string();
    assert!(e.contains("unknown init `he`"), "{e}");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward, paper-forward]\nseeds: [0]\nout: runs\n");
    let e = run(&cfg, Path::new("cnnc"), 1).unwrap_err().to_string();
    assert!(e.contains("init `paper-forward` is listed twice"), "{e}");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward]\nseeds: [0]\nanalysis: exact\nout: runs\n");
    let e = run(&cfg, Path::new("cnnc"), 1).unwrap_err().to_string();
    assert!(e.contains("unknown analysis `exact`"), "{e}");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward]\nseeds: [0]\nout: runs\nslurm:\n  partition: a b\n");
    let e = run(&cfg, Path::new("cnnc"), 1).unwrap_err().to_string();
    assert!(e.contains("slurm.partition `a b`"), "{e}");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward]\nseeds: [0]\nout: runs\ncolour: blue\n");
    let e = run(&cfg, Path::new("cnnc"), 1).unwrap_err().to_string();
    assert!(e.contains("unknown field `colour`"), "{e}");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward@zero]\nseeds: [0]\nout: runs\n");
    let e = run(&cfg, Path::new("cnnc"), 1).unwrap_err().to_string();
    assert!(e.contains("`zero` after @ is not a branch scale"), "{e}");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward@0, paper-forward@0.0]\nseeds: [0]\nout: runs\n");
    let e = run(&cfg, Path::new("cnnc"), 1).unwrap_err().to_string();
    assert!(e.contains("init `paper-forward@0.0` is listed twice"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `forward@0` in `inits`: the run's plan takes `--branch-scale 0`; the others none.
#[test]
fn an_init_with_a_branch_scale_passes_it_to_its_runs() {
    let dir = std::env::temp_dir().join(format!("cnnc-experiment-alpha-{}", std::process::id()));
    let cfg = dir.join("grid.yaml");
    write(&cfg, "model: m.cnn\ndata: d\nepochs: 1\ninits: [forward, map-forward@0]\nseeds: [0]\nout: runs\n");
    let exp = cnnc::experiment::Experiment::load(&cfg).unwrap();
    let args: Vec<String> =
        exp.runs.iter().map(|r| exp.train_args(r).join(std::ffi::OsStr::new(" ")).to_string_lossy().into_owned()).collect();
    assert!(!args[0].contains("--branch-scale"), "{}", args[0]);
    assert!(args[1].contains("--init forward --analysis map --branch-scale 0 --seed 0"), "{}", args[1]);
    assert!(exp.runs[1].dir.ends_with("map-forward@0-s0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A grid of 2 inits × 2 seeds on synthetic data in a fresh folder: (folder, config path).
fn tiny_grid(name: &str, extra: &str) -> (PathBuf, PathBuf) {
    let exe = Path::new(env!("CARGO_BIN_EXE_cnnc"));
    let dir = std::env::temp_dir().join(format!("cnnc-experiment-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(exe)
        .args(["synth-data", dir.join("data").to_str().unwrap(), "--classes", "2", "--per-class", "12", "--size", "8", "--seed", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    write(
        &dir.join("tiny.cnn"),
        "network Tiny\ninput 3x8x8\nconv(3/p1) -> 4, relu, maxpool(2)\nconv(3/p1) -> 4, relu, global_avgpool\nlinear -> 2\n",
    );
    let cfg = dir.join("exp.yaml");
    write(
        &cfg,
        &format!("model: tiny.cnn\ndata: data\nepochs: 2\nbatch_size: 4\nlr: 0.05\ninits: [kaiming-in, map-forward]\nseeds: [0, 1]\nout: runs\n{extra}"),
    );
    (dir, cfg)
}

fn cnnc(args: &[&std::ffi::OsStr], path: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cnnc"));
    cmd.args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn two_jobs_give_the_results_of_one_and_another_config_cannot_take_the_directory() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cnnc"));
    let (dir, cfg) = tiny_grid("jobs", "");
    // Two threads a run either way (a run's float sums depend on its thread count).
    let grid = |jobs: &str, threads: &str| {
        let out = Command::new(exe)
            .args(["experiment".as_ref(), cfg.as_os_str(), "--jobs".as_ref(), jobs.as_ref(), "--quiet".as_ref()])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    grid("1", "2");
    let serial = cnnc::experiment::collect(&cnnc::experiment::Experiment::load(&cfg).unwrap()).unwrap();
    std::fs::rename(dir.join("runs"), dir.join("runs-serial")).unwrap();
    let err = grid("2", "4");
    for line in ["kaiming-in-s0 started", "map-forward-s1: done, best", "(4/4 runs"] {
        assert!(err.contains(line), "`{line}` in the plain progress lines:\n{err}");
    }
    let parallel = cnnc::experiment::collect(&cnnc::experiment::Experiment::load(&cfg).unwrap()).unwrap();
    assert_eq!(serial, parallel);
    for file in ["results.md", "curves.svg"] {
        let a = std::fs::read_to_string(dir.join("runs-serial").join(file)).unwrap();
        assert_eq!(a, std::fs::read_to_string(dir.join("runs").join(file)).unwrap(), "{file}");
    }
    for run in ["kaiming-in-s0", "kaiming-in-s1", "map-forward-s0", "map-forward-s1"] {
        let a = std::fs::read(dir.join("runs-serial").join(run).join("checkpoint.safetensors")).unwrap();
        assert!(a == std::fs::read(dir.join("runs").join(run).join("checkpoint.safetensors")).unwrap(), "{run}: the same weights");
    }
    assert!(std::fs::read_to_string(dir.join("runs/map-forward-s0/plan.json")).unwrap().contains("\"analysis\": \"map\""));
    assert!(std::fs::read_to_string(dir.join("runs/kaiming-in-s0/plan.json")).unwrap().contains("\"mode\": \"kaiming-in\""));

    // Another learning rate, the same out: refused before anything is written.
    let manifest = std::fs::read(dir.join("runs/experiment.json")).unwrap();
    let results = std::fs::read(dir.join("runs/results.md")).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    write(&cfg, &text.replace("lr: 0.05", "lr: 0.1").replace("epochs: 2", "epochs: 3"));
    let e = run(&cfg, exe, 1).unwrap_err().to_string();
    assert!(e.contains("belongs to another experiment") && e.contains("lr: 0.05 there, 0.1 here"), "{e}");
    let (code, _, err) = cnnc(&["experiment".as_ref(), cfg.as_os_str(), "--slurm".as_ref(), "--dry-run".as_ref()], None);
    assert_eq!(code, 1);
    assert!(err.contains("belongs to another experiment"), "{err}");
    assert!(!dir.join("runs/slurm").exists(), "no script was written");
    let (code, _, err) = cnnc(&["experiment".as_ref(), cfg.as_os_str(), "--status".as_ref()], None);
    assert_eq!(code, 1);
    assert!(err.contains("belongs to another experiment"), "{err}");
    assert_eq!(std::fs::read(dir.join("runs/experiment.json")).unwrap(), manifest);
    assert_eq!(std::fs::read(dir.join("runs/results.md")).unwrap(), results);
    assert_eq!(cnnc::experiment::read_val_accuracy(&dir.join("runs/kaiming-in-s0/metrics.jsonl")).len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_batch_script_has_one_task_per_run_and_submitting_needs_sbatch() {
    let (dir, cfg) = tiny_grid("script", "slurm:\n  partition: cpu\n  time: \"2:00:00\"\n  extra: [\"#SBATCH --qos=short\"]\n");
    let args = |extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = vec!["experiment".into(), cfg.clone().into(), "--slurm".into()];
        a.extend(extra.iter().map(|s| s.into()));
        a
    };
    let (code, _, err) =
        cnnc(&args(&["--dry-run", "--time", "0:30:00", "--cpus", "2"]).iter().map(|a| a.as_os_str()).collect::<Vec<_>>(), None);
    assert_eq!(code, 0, "{err}");
    let path = dir.join("runs/slurm/array.sbatch");
    let script = std::fs::read_to_string(&path).unwrap();
    for line in [
        "#SBATCH --array=0-3",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --partition=cpu",
        "#SBATCH --time=0:30:00",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --qos=short",
        "    --continue",
        "    scontrol requeue",
    ] {
        assert!(script.lines().any(|l| l == line || l.starts_with(line)), "`{line}` in\n{script}");
    }
    assert!(!script.contains("--time=2:00:00"), "the flag overrides the config");
    let runs = Path::new(&dir).canonicalize().unwrap().join("runs");
    for (k, (init, analysis, seed)) in
        [("kaiming-in", "paper", 0), ("kaiming-in", "paper", 1), ("forward", "map", 0), ("forward", "map", 1)].iter().enumerate()
    {
        let name = if *analysis == "map" { format!("map-{init}-s{seed}") } else { format!("{init}-s{seed}") };
        let line =
            format!("    {k}) run=(--init {init} --analysis {analysis} --seed {seed} --out {}) ;;  # {name}", runs.join(&name).display());
        assert!(script.contains(&line), "`{line}` in\n{script}");
    }
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));

    // Without sbatch on PATH: a clear error, the script kept.
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = cnnc(&args(&[]).iter().map(|a| a.as_os_str()).collect::<Vec<_>>(), Some(&empty));
    assert_eq!(code, 1);
    assert!(err.contains("`sbatch` is not on PATH") && err.contains("array.sbatch"), "{err}");

    // Status before anything ran, then with a diverged and a failed run.
    let (code, out, err) = cnnc(&["experiment".as_ref(), cfg.as_os_str(), "--status".as_ref()], Some(&empty));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 runs: 0 done, 0 running, 4 pending, 0 failed, 0 diverged"), "{out}");
    write(&runs.join("kaiming-in-s1/DIVERGED"), "the loss is NaN");
    write(&runs.join("map-forward-s0/FAILED"), "exit 1");
    let (_, out, _) = cnnc(&["experiment".as_ref(), cfg.as_os_str(), "--status".as_ref()], Some(&empty));
    assert!(out.contains("4 runs: 0 done, 0 running, 2 pending, 1 failed, 1 diverged"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("map-forward-s0") && l.contains("failed") && l.contains("0/2")), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
