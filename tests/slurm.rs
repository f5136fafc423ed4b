//! The grid on a real Slurm (not a stand-in for sbatch): a one-node cluster on this
//! machine (`scripts/slurm/cluster.sh`: munged, slurmctld, slurmd, stopped when the test
//! ends, however it ends), a 2 inits × 2 seeds grid submitted as a job array. One task is
//! cancelled mid-run (`scancel`: SIGTERM) and resubmitted; another gets the time-limit
//! warning (`scancel --signal=USR1 --batch`, what `--signal=B:USR1@SECS` sends) and
//! requeues itself. Both runs must end with the weights, momentum and metrics of an
//! uninterrupted run. sbatch refusing the script (an unknown partition) is an error that
//! shows sbatch's message.
//!
//! Runs when `CNNC_TEST_SLURM=1` (as root, with Debian's slurm-wlm and munge; `.ci/run`
//! installs them and sets it); otherwise it says so and passes.

use cnnc::experiment::Experiment;
use cnnc::train;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm/cluster.sh");

/// The test cluster; stopped on drop.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let out = Command::new("bash").arg(CLUSTER).arg("start").arg(dir).output().unwrap();
        assert!(out.status.success(), "cluster.sh start: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Cluster { dir: dir.to_path_buf() }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// Runs a Slurm command against this cluster; its stdout.
    fn run(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool).args(args).env("SLURM_CONF", self.conf()).output().unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The state of every task of `job` still queued or running, as `(task, STATE)`.
    fn tasks(&self, job: &str) -> Vec<(usize, String)> {
        self.run("squeue", &["-h", "-r", "-j", job, "-o", "%i %T"])
            .lines()
            .filter_map(|l| {
                let (id, state) = l.trim().split_once(' ')?;
                Some((id.split_once('_')?.1.parse().ok()?, state.to_string()))
            })
            .collect()
    }

    /// Waits until `done` holds, polling every 0.2 s; fails after `limit` with the logs.
    fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !done() {
            if t0.elapsed() > limit {
                let log = std::fs::read_to_string(self.dir.join("log/slurmctld.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!("timed out after {limit:?} waiting for {what}; slurmctld.log (last lines, newest first):\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(CLUSTER).arg("stop").arg(&self.dir).status();
    }
}

fn cnnc(args: &[&str], conf: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnc")).args(args).env("SLURM_CONF", conf).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn metrics(run: &Path) -> Vec<(usize, u64, Option<u64>)> {
    let text = std::fs::read_to_string(run.join(train::METRICS)).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<train::EpochMetrics>(l).unwrap())
        .map(|m| (m.epoch, m.train_loss.to_bits(), m.val_accuracy.map(f64::to_bits)))
        .collect()
}

#[test]
fn a_grid_runs_as_a_slurm_array_and_stopped_tasks_resume_exactly() {
    if std::env::var_os("CNNC_TEST_SLURM").is_none() {
        eprintln!(
            "skipped: set CNNC_TEST_SLURM=1 to run the grid on a one-node Slurm started here (root; apt-get install slurm-wlm munge)"
        );
        return;
    }
    let t0 = Instant::now();
    let root = std::env::temp_dir().join(format!("cnnc-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let cluster = Cluster::start(&root.join("cluster"));
    let conf = cluster.conf();

    // 2 inits × 2 seeds, 2 epochs of 36 steps: a few seconds a run, long enough to stop one
    // (the channels wide enough for that with cnnc built at opt-level 1).
    train::data::synthesize(&root.join("data"), 4, 96, 32, 2).unwrap();
    std::fs::write(
        root.join("small.cnn"),
        "network Small\ninput 3x32x32\nconv(3/p1) -> 64, relu\nconv(3/p1) -> 64, relu, maxpool(2)\n\
         conv(3/p1) -> 128, relu, global_avgpool\nlinear -> 4\n",
    )
    .unwrap();
    let cfg = root.join("exp.yaml");
    std::fs::write(
        &cfg,
        "model: small.cnn\ndata: data\nepochs: 2\nbatch_size: 8\nlr: 0.01\ninits: [forward, kaiming-in]\nseeds: [0, 1]\nout: runs\n\
         slurm:\n  cpus_per_task: 1\n  time: \"00:10:00\"\n",
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let exp = Experiment::load(&cfg).unwrap();
    let (cancelled, warned) = (&exp.runs[0], &exp.runs[1]);
    assert_eq!((cancelled.init.as_str(), cancelled.seed, warned.seed), ("forward", 0, 1));

    // sbatch refuses an unknown partition: its message is shown, the exit status is 1.
    let (code, _, err) = cnnc(&["experiment", cfg_s, "--slurm", "--partition", "nosuch"], &conf);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sbatch refused") && err.contains("invalid partition"), "{err}");

    let (code, out, err) = cnnc(&["experiment", cfg_s, "--slurm"], &conf);
    assert_eq!(code, 0, "{err}");
    let job = out.trim().to_string();
    assert!(job.parse::<u64>().is_ok(), "a job id: {out:?}");
    assert!(err.contains("array tasks 0-3"), "{err}");

    // Tasks 0 and 1 run (2 CPUs, 1 each); once both are training their first epoch, stop them.
    let training = |run: &cnnc::experiment::RunSpec| {
        run.dir.join("config.json").exists() && !run.dir.join(train::METRICS).exists()
            || std::fs::read_to_string(run.dir.join(train::METRICS)).is_ok_and(|m| m.is_empty())
    };
    cluster.wait_for("tasks 0 and 1 to start training", Duration::from_secs(120), || training(cancelled) && training(warned));
    std::thread::sleep(Duration::from_millis(500));
    // scancel --signal retries while the task it signalled ends and requeues ("Job can not
    // be altered now"): it runs beside the test and is ended once the requeue is seen.
    let mut warn = Command::new("scancel")
        .args(["--signal=USR1", "--batch", &format!("{job}_1")])
        .env("SLURM_CONF", &conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cluster.run("scancel", &[&format!("{job}_0")]);

    // Task 1 checkpoints and requeues itself; Slurm holds a requeued task for a while
    // (BeginTime): release it at once.
    let log1 = exp.out.join(format!("slurm/{job}_1.out"));
    cluster.wait_for("task 1 to requeue itself", Duration::from_secs(60), || {
        std::fs::read_to_string(&log1).is_ok_and(|l| l.contains("requeued"))
            && cluster.tasks(&job).iter().any(|(t, s)| *t == 1 && s == "PENDING")
    });
    let _ = warn.kill();
    let _ = warn.wait();
    cluster.run("scontrol", &["update", &format!("JobId={job}_1"), "StartTime=now"]);
    cluster.wait_for("the array to finish", Duration::from_secs(240), || cluster.tasks(&job).is_empty());

    let log0 = std::fs::read_to_string(exp.out.join(format!("slurm/{job}_0.out"))).unwrap();
    assert!(log0.contains("stopped by a signal at epoch 1"), "{log0}");
    let (epochs, steps) = train::checkpoint_progress(&cancelled.dir).unwrap();
    assert!(epochs < 2, "the cancelled run was stopped before its end ({epochs} epochs, {steps} steps)");
    let log1 = std::fs::read_to_string(&log1).unwrap();
    assert!(log1.contains("stopped by a signal at epoch") && log1.matches("task 1 on").count() == 2, "ran twice:\n{log1}");
    let (_, status, _) = cnnc(&["experiment", cfg_s, "--status"], &conf);
    assert!(status.contains("4 runs: 3 done, 0 running, 1 pending, 0 failed, 0 diverged"), "{status}");
    assert!(status.lines().any(|l| l.starts_with("forward-s0 ") && l.contains("pending")), "{status}");

    // Resubmitted: only the unfinished task goes, and its run resumes from the checkpoint.
    let (code, out, err) = cnnc(&["experiment", cfg_s, "--slurm"], &conf);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("array tasks 0;"), "{err}");
    let job2 = out.trim().to_string();
    cluster.wait_for("the resubmitted task to finish", Duration::from_secs(120), || cluster.tasks(&job2).is_empty());
    let log = std::fs::read_to_string(exp.out.join(format!("slurm/{job2}_0.out"))).unwrap();
    assert!(!log.contains("stopped"), "{log}");

    let (code, _, err) = cnnc(&["experiment", cfg_s, "--collect"], &conf);
    assert_eq!(code, 0, "{err}");
    let results = std::fs::read_to_string(exp.out.join("results.md")).unwrap();
    assert!(results.contains("| forward | 2 | 0 |") && results.contains("| kaiming-in | 2 | 0 |"), "{results}");

    // Each stopped run equals the same run trained without a stop (one thread, as the tasks).
    for run in [cancelled, warned] {
        let mut straight = run.clone();
        straight.dir = root.join("straight").join(run.name());
        let out = Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .args(exp.train_args(&straight))
            .arg("--quiet")
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(train::checkpoint_progress(&run.dir).unwrap(), (2, 0));
        assert_eq!(metrics(&run.dir), metrics(&straight.dir), "{}: epochs, losses and accuracies", run.name());
        assert_eq!(metrics(&run.dir).len(), 2);
        assert!(
            train::checkpoint_weights(&run.dir).unwrap() == train::checkpoint_weights(&straight.dir).unwrap(),
            "{}: the weights and momentum of an uninterrupted run",
            run.name()
        );
    }
    drop(cluster);
    eprintln!("slurm test: {:.1} s", t0.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&root).unwrap();
}
