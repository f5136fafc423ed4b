//! The grid as a Slurm job array: one array task per run, each task one `cnnc train
//! --continue` (idempotent: a finished run exits at once, a checkpointed one resumes).
//!
//! [`script`] writes `<out>/slurm/array.sbatch`, a plain bash script a person can read,
//! edit and submit by hand: the `#SBATCH` options (from the config's `slurm:` section,
//! flags over it), the `cnnc train` arguments every run shares, and a `case` from the
//! array index to the run's own. Preemption and time limits: `--signal=B:USR1@SECS`
//! warns the script ahead of the limit; it passes the signal on to `cnnc train`, which
//! checkpoints at the end of its step and exits with 75; the script then requeues its
//! task (`scontrol requeue`), which continues from the checkpoint. SIGTERM (scancel,
//! preemption) is passed on too; the run checkpoints and the task ends.
//!
//! Files: each task writes its own run directory and its own log
//! (`<out>/slurm/%A_%a.out`); nothing else. `results.md` is the collecting command's.
//!
//! [`submit`] calls `sbatch --parsable` (only the tasks whose runs need training) and
//! records the job id in `<out>/slurm/jobs`; [`status`] reads the run directories, and
//! `squeue` / `sacct` when they are on PATH.

use super::{needs_training, result_of, Experiment, ExperimentError, RunSpec, FAILED};
use serde::Deserialize;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `slurm:` section of an experiment config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Generic resources per task, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// Time limit per task, in any form sbatch takes (`24:00:00`, `2-00:00:00`).
    pub time: Option<String>,
    pub cpus_per_task: Option<usize>,
    /// Memory per node, e.g. `16G`.
    pub mem: Option<String>,
    /// Seconds before the time limit at which the task is told to checkpoint (default 300).
    pub signal_seconds: Option<u64>,
    /// Lines copied into the script after the `#SBATCH` options (`#SBATCH --qos=long`,
    /// `module load cuda`).
    #[serde(default)]
    pub extra: Vec<String>,
}

impl SlurmConfig {
    /// Refuses values that would break the script (a newline would end a `#SBATCH` line).
    pub fn check(&self) -> Result<(), String> {
        let fields =
            [("partition", &self.partition), ("account", &self.account), ("gres", &self.gres), ("time", &self.time), ("mem", &self.mem)];
        for (name, value) in fields {
            if let Some(v) = value {
                if v.is_empty() || v.contains(['\n', '\r', ' ', '\'', '"']) {
                    return Err(format!("slurm.{name} `{v}`: expected one word (no spaces, quotes or newlines)"));
                }
            }
        }
        if self.cpus_per_task == Some(0) {
            return Err("slurm.cpus_per_task must be at least 1".into());
        }
        if let Some(l) = self.extra.iter().find(|l| l.contains(['\n', '\r'])) {
            return Err(format!("slurm.extra: each entry is one line, got {l:?}"));
        }
        Ok(())
    }

    /// `self` with every option `over` sets replaced (the flags over the config).
    pub fn overridden(&self, over: &SlurmConfig) -> SlurmConfig {
        let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone());
        SlurmConfig {
            partition: pick(&self.partition, &over.partition),
            account: pick(&self.account, &over.account),
            gres: pick(&self.gres, &over.gres),
            time: pick(&self.time, &over.time),
            cpus_per_task: over.cpus_per_task.or(self.cpus_per_task),
            mem: pick(&self.mem, &over.mem),
            signal_seconds: over.signal_seconds.or(self.signal_seconds),
            extra: self.extra.iter().chain(&over.extra).cloned().collect(),
        }
    }
}

/// `cnnc train`'s exit status after a stop (see [`crate::train::stop`]).
const EXIT_INTERRUPTED: u8 = crate::train::stop::EXIT_INTERRUPTED;

/// `<out>/slurm`.
pub fn slurm_dir(exp: &Experiment) -> PathBuf {
    exp.out.join("slurm")
}

/// Quotes `s` for bash (single quotes; a quote inside becomes `'\''`).
fn sh(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        return s.into_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script for `exp`'s grid, running `exe`.
pub fn script(exp: &Experiment, exe: &Path, opts: &SlurmConfig) -> String {
    let dir = slurm_dir(exp);
    let n = exp.runs.len();
    let name: String = exp.out.file_name().map_or("grid".into(), |n| n.to_string_lossy().into_owned());
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!("# Written by `cnnc experiment {} --slurm`: one array task per (init, seed),\n", exp.config_path.display()));
    s.push_str("# each running that run's `cnnc train --continue` (a finished run exits at once, a\n");
    s.push_str("# checkpointed one resumes). Edit it and submit it by hand if you like: sbatch array.sbatch\n");
    let mut opt = |line: String| s.push_str(&format!("#SBATCH {line}\n"));
    opt(format!("--job-name=cnnc-{}", sh(OsStr::new(&name))));
    opt(format!("--array=0-{}", n - 1));
    opt(format!("--output={}", sh(dir.join("%A_%a.out").as_os_str())));
    opt("--open-mode=append".into());
    opt("--requeue".into());
    opt(format!("--signal=B:USR1@{}", opts.signal_seconds.unwrap_or(300)));
    opt("--ntasks=1".into());
    opt(format!("--cpus-per-task={}", opts.cpus_per_task.unwrap_or(1)));
    for (flag, value) in
        [("partition", &opts.partition), ("account", &opts.account), ("gres", &opts.gres), ("time", &opts.time), ("mem", &opts.mem)]
    {
        if let Some(v) = value {
            opt(format!("--{flag}={v}"));
        }
    }
    for line in &opts.extra {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("set -u\n\n");
    s.push_str(&format!("cnnc={}\n", sh(exe.as_os_str())));
    s.push_str(&format!("logs={}\n", sh(dir.as_os_str())));
    s.push_str("# What every run shares.\ncommon=(\n");
    for group in exp.common_args() {
        let words: Vec<String> = group.iter().map(|a| sh(a)).collect();
        s.push_str(&format!("    {}\n", words.join(" ")));
    }
    s.push_str(")\n# Each task's own run.\ncase \"${SLURM_ARRAY_TASK_ID:?not an array task}\" in\n");
    for (k, run) in exp.runs.iter().enumerate() {
        let words: Vec<String> = Experiment::run_args(run).iter().map(|a| sh(a)).collect();
        s.push_str(&format!("    {k}) run=({}) ;;  # {}\n", words.join(" "), run.name()));
    }
    s.push_str("    *) echo \"no run for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n");
    s.push_str(&format!(
        r#"out=${{run[-1]}}
mkdir -p "$out" && rm -f "$out/{FAILED}"
export RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $out ($(date -u +%FT%TZ))"

# cnnc checkpoints and exits with {EXIT_INTERRUPTED} on SIGUSR1 (sent ahead of the time limit) or SIGTERM.
"$cnnc" train "${{common[@]}}" "${{run[@]}}" &
child=$!
requeue=0
trap 'requeue=1; kill -USR1 "$child" 2>/dev/null' USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM
# A trapped signal cuts `wait` short (status > 128): wait again for cnnc's own status
# (127 when it had already been waited for: then rc is it, a death by a signal).
wait "$child"
rc=$?
while [ "$rc" -gt 128 ]; do
    wait "$child"
    next=$?
    [ "$next" -eq 127 ] && break
    rc=$next
done
if [ "$rc" -eq {EXIT_INTERRUPTED} ] && [ "$requeue" -eq 1 ]; then
    echo "task $SLURM_ARRAY_TASK_ID: checkpointed before the time limit; requeued"
    scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
elif [ "$rc" -ne 0 ] && [ "$rc" -ne {EXIT_INTERRUPTED} ]; then
    echo "cnnc train exited with $rc; its log: $logs/${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out" > "$out/{FAILED}"
fi
exit "$rc"
"#
    ));
    s
}

/// Writes the script to `<out>/slurm/array.sbatch` (atomically) and returns its path.
pub fn write_script(exp: &Experiment, exe: &Path, opts: &SlurmConfig) -> Result<PathBuf, ExperimentError> {
    let dir = slurm_dir(exp);
    std::fs::create_dir_all(&dir).map_err(|e| ExperimentError::Io(format!("{}: {e}", dir.display())))?;
    let path = dir.join("array.sbatch");
    crate::write_atomic(&path, script(exp, exe, opts).as_bytes()).map_err(|e| ExperimentError::Io(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// `name` on PATH, if it is there.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The array indices of the runs that need training, as sbatch's `--array` list (`0,2-4`).
pub fn pending_tasks(exp: &Experiment) -> String {
    let idx: Vec<usize> = (0..exp.runs.len()).filter(|&i| needs_training(exp, &exp.runs[i])).collect();
    let mut parts = Vec::new();
    let mut k = 0;
    while k < idx.len() {
        let start = idx[k];
        while k + 1 < idx.len() && idx[k + 1] == idx[k] + 1 {
            k += 1;
        }
        parts.push(if idx[k] == start { start.to_string() } else { format!("{start}-{}", idx[k]) });
        k += 1;
    }
    parts.join(",")
}

/// Submits the script for the tasks in `tasks` (see [`pending_tasks`]) and returns the job
/// id, also appended to `<out>/slurm/jobs`. Errors: no `sbatch` on PATH, or sbatch's own
/// message when it refuses the script.
pub fn submit(exp: &Experiment, script: &Path, tasks: &str) -> Result<String, ExperimentError> {
    let sbatch = which("sbatch").ok_or_else(|| {
        ExperimentError::Slurm(format!(
            "--slurm: `sbatch` is not on PATH (is this a Slurm login node?); the script is written: {}",
            script.display()
        ))
    })?;
    let out = Command::new(&sbatch)
        .arg("--parsable")
        .arg(format!("--array={tasks}"))
        .arg(script)
        .output()
        .map_err(|e| ExperimentError::Slurm(format!("cannot run {}: {e}", sbatch.display())))?;
    if !out.status.success() {
        return Err(ExperimentError::Slurm(format!(
            "sbatch refused {} ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // --parsable prints `jobid` or `jobid;cluster`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(ExperimentError::Slurm(format!("sbatch printed no job id: {:?}", stdout.trim())));
    }
    let jobs = slurm_dir(exp).join("jobs");
    let mut text = std::fs::read_to_string(&jobs).unwrap_or_default();
    text.push_str(&format!("{id} {tasks}\n"));
    crate::write_atomic(&jobs, text.as_bytes()).map_err(|e| ExperimentError::Io(format!("{}: {e}", jobs.display())))?;
    Ok(id)
}

/// The job ids submitted for this grid, oldest first (`<out>/slurm/jobs`).
pub fn job_ids(exp: &Experiment) -> Vec<String> {
    std::fs::read_to_string(slurm_dir(exp).join("jobs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Where one run stands.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStatus {
    pub name: String,
    /// pending, running, done, failed or diverged.
    pub state: &'static str,
    pub epochs: usize,
    /// Steps of the next epoch trained before an interruption.
    pub partial_steps: usize,
    pub best: Option<f64>,
    /// What Slurm says of the run's latest array task, when it is known.
    pub slurm: Option<String>,
}

/// The status of every run: from its directory (a lock held: running; its epochs; the
/// marks), and from `squeue` / `sacct` for the grid's latest job when they are on PATH.
pub fn status(exp: &Experiment) -> Vec<RunStatus> {
    let slurm = slurm_states(exp);
    exp.runs
        .iter()
        .enumerate()
        .map(|(k, run)| {
            let r = result_of(run);
            let (_, partial_steps) = crate::train::checkpoint_progress(&run.dir).unwrap_or((0, 0));
            let slurm = slurm.iter().find(|(t, _)| *t == k).map(|(_, s)| s.clone());
            let state = run_state(exp, run, r.diverged, r.val_accuracy.len(), slurm.as_deref());
            RunStatus { name: run.name(), state, epochs: r.val_accuracy.len(), partial_steps, best: r.best(), slurm }
        })
        .collect()
}

fn run_state(exp: &Experiment, run: &RunSpec, diverged: bool, epochs: usize, slurm: Option<&str>) -> &'static str {
    if diverged {
        "diverged"
    } else if epochs >= exp.config.epochs {
        "done"
    } else if crate::train::run_is_locked(&run.dir) || slurm.is_some_and(|s| s.starts_with("RUNNING")) {
        "running"
    } else if run.dir.join(FAILED).exists()
        || slurm.is_some_and(|s| ["FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"].iter().any(|f| s.starts_with(f)))
    {
        "failed"
    } else {
        "pending"
    }
}

/// (array index, state) of the latest job's tasks: squeue for tasks still queued or
/// running, sacct for the ones that ended (when accounting is on). Empty without them.
fn slurm_states(exp: &Experiment) -> Vec<(usize, String)> {
    let Some(job) = job_ids(exp).pop() else { return Vec::new() };
    let mut states = Vec::new();
    if which("sacct").is_some() {
        if let Ok(out) = Command::new("sacct").args(["-n", "-X", "-P", "-o", "JobID,State", "-j", &job]).output() {
            if out.status.success() {
                states.extend(parse_tasks(&String::from_utf8_lossy(&out.stdout), '|'));
            }
        }
    }
    if which("squeue").is_some() {
        if let Ok(out) = Command::new("squeue").args(["-h", "-r", "-o", "%i %T", "-j", &job]).output() {
            if out.status.success() {
                for (k, s) in parse_tasks(&String::from_utf8_lossy(&out.stdout), ' ') {
                    states.retain(|(t, _)| *t != k);
                    states.push((k, s));
                }
            }
        }
    }
    states.into_iter().map(|(k, s)| (k, format!("{s} (job {job}_{k})"))).collect()
}

/// Lines `JOB_TASK<sep>STATE` → (task, STATE); other lines (steps, ranges) are skipped.
fn parse_tasks(text: &str, sep: char) -> Vec<(usize, String)> {
    text.lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once(sep)?;
            let task = id.split_once('_')?.1.parse().ok()?;
            Some((task, state.split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// `status` as a table.
pub fn status_table(exp: &Experiment, rows: &[RunStatus]) -> String {
    let mut s = format!("{:<24} {:<9} {:>8} {:>9}  slurm\n", "run", "state", "epochs", "best val");
    for r in rows {
        let epochs = if r.partial_steps > 0 { format!("{}+{}st", r.epochs, r.partial_steps) } else { r.epochs.to_string() };
        let best = r.best.map_or("–".into(), |b| format!("{:.2} %", 100.0 * b));
        s.push_str(&format!(
            "{:<24} {:<9} {:>8} {:>9}  {}\n",
            r.name,
            r.state,
            format!("{epochs}/{}", exp.config.epochs),
            best,
            r.slurm.as_deref().unwrap_or("")
        ));
    }
    let count = |st: &str| rows.iter().filter(|r| r.state == st).count();
    s.push_str(&format!(
        "{} runs: {} done, {} running, {} pending, {} failed, {} diverged\n",
        rows.len(),
        count("done"),
        count("running"),
        count("pending"),
        count("failed"),
        count("diverged")
    ));
    s
}
