//! The grid on this machine: a bounded pool of `cnnc train` processes.
//!
//! `jobs` runs at a time (1: one after another), in grid order. The CPU threads are
//! divided between them (`RAYON_NUM_THREADS`, which the training loop's pool reads: the
//! machine's, or the caller's `RAYON_NUM_THREADS`, over the number of jobs), and with
//! `gpus` each job slot gets one device (`CUDA_VISIBLE_DEVICES`, round-robin over the
//! slots). Every run of the pool is the process a serial run starts, with the same
//! arguments; what can differ is its thread count, and with it the order of some float
//! sums (the weight gradients are summed over blocks of samples, one block per thread),
//! so the weights differ in their last bits. For results bit for bit those of a serial run
//! with T threads, give `RAYON_NUM_THREADS` = jobs × T.
//!
//! Progress: on a terminal, one bar for the grid (runs done / total, the epoch and step
//! of each run in flight, ETA over the steps left); in a log or with `quiet`, a plain line
//! when a run starts, finishes an epoch, and ends. The processes report their steps with
//! `cnnc train --progress-lines`.
//!
//! A signal (SIGTERM, SIGUSR1, SIGINT) stops the pool: no new runs start, the running
//! ones are told to stop (SIGTERM: each checkpoints), and [`run`] returns
//! [`ExperimentError::Interrupted`] once they are gone.

use super::{needs_training, result_of, Experiment, ExperimentError, RunSpec, FAILED};
use crate::train::{stop, PROGRESS_PREFIX};
use std::io::{BufRead, IsTerminal};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How the grid runs here.
#[derive(Clone, Debug)]
pub struct Options {
    /// Runs at a time (at least 1).
    pub jobs: usize,
    /// GPU ids for `CUDA_VISIBLE_DEVICES`, one per job slot, round-robin; empty: not set.
    pub gpus: Vec<String>,
    /// Plain lines instead of a bar, even on a terminal.
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { jobs: 1, gpus: Vec::new(), quiet: true }
    }
}

/// The threads each of `jobs` concurrent runs gets: the caller's `RAYON_NUM_THREADS`, else
/// the machine's logical CPUs, divided evenly (at least 1).
pub fn threads_per_job(jobs: usize) -> usize {
    let total = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (total / jobs.max(1)).max(1)
}

/// What the reader of one child's stderr reports.
enum Event {
    Step { slot: usize, epoch: usize, step: usize, steps: usize },
    Exited { slot: usize, status: std::io::Result<std::process::ExitStatus>, stderr: String },
}

/// A run in flight.
struct Slot {
    run: usize,
    pid: u32,
    epoch: usize,
    step: usize,
    steps: usize,
}

/// Trains every run of `exp` that needs it, `opts.jobs` at a time, with `exe train`.
/// Runs that fail are marked `FAILED` (with their error) and reported together at the end;
/// the others go on.
pub fn run(exp: &Experiment, exe: &std::path::Path, opts: &Options) -> Result<(), ExperimentError> {
    stop::on_signals().map_err(|e| ExperimentError::Io(format!("cannot install the signal handlers: {e}")))?;
    let pending: Vec<usize> = (0..exp.runs.len()).filter(|&i| needs_training(exp, &exp.runs[i])).collect();
    let jobs = opts.jobs.max(1).min(pending.len().max(1));
    let threads = threads_per_job(jobs);
    let mut view = View::new(exp, opts.quiet);
    let (tx, rx) = mpsc::channel::<Event>();
    let mut slots: Vec<Option<Slot>> = (0..jobs).map(|_| None).collect();
    let mut queue = pending.into_iter();
    let mut failures = Vec::new();
    let mut stopping = false;
    loop {
        if stop::requested() && !stopping {
            stopping = true;
            for s in slots.iter().flatten() {
                terminate(s.pid);
            }
        }
        if !stopping {
            for (k, slot) in slots.iter_mut().enumerate() {
                if slot.is_some() {
                    continue;
                }
                let Some(i) = queue.next() else { break };
                let run = &exp.runs[i];
                let gpu = (!opts.gpus.is_empty()).then(|| opts.gpus[k % opts.gpus.len()].as_str());
                let _ = std::fs::remove_file(run.dir.join(FAILED));
                match spawn(exp, exe, run, threads, gpu) {
                    Ok(child) => {
                        view.started(run);
                        *slot = Some(Slot { run: i, pid: child.id(), epoch: 0, step: 0, steps: 0 });
                        watch(child, k, tx.clone());
                    }
                    Err(e) => failures.push(fail(run, &format!("cannot start {}: {e}", exe.display()))),
                }
            }
        }
        if slots.iter().all(Option::is_none) {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Step { slot, epoch, step, steps }) => {
                if let Some(s) = slots[slot].as_mut() {
                    if epoch != s.epoch && s.epoch != 0 {
                        view.epoch_done(&exp.runs[s.run]);
                    }
                    (s.epoch, s.step, s.steps) = (epoch, step, steps);
                }
            }
            Ok(Event::Exited { slot, status, stderr }) => {
                let Some(s) = slots[slot].take() else { continue };
                let run = &exp.runs[s.run];
                match status {
                    Ok(st) if st.success() => view.finished(run),
                    Ok(st) if st.code() == Some(i32::from(stop::EXIT_INTERRUPTED)) => {
                        view.note(&format!("{}: stopped, checkpointed", run.name()))
                    }
                    Ok(_) if run.dir.join(super::DIVERGED).exists() => view.finished(run),
                    Ok(st) => failures.push(fail(run, &format!("{st}: {}", last_lines(&stderr)))),
                    Err(e) => failures.push(fail(run, &format!("cannot wait for it: {e}"))),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        view.draw(&slots);
    }
    view.close();
    if stopping {
        return Err(ExperimentError::Interrupted);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ExperimentError::Failed(failures))
    }
}

/// Starts `cnnc train` for `run`, its stderr piped to us.
fn spawn(exp: &Experiment, exe: &std::path::Path, run: &RunSpec, threads: usize, gpu: Option<&str>) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(exp.train_args(run)).arg("--progress-lines").env("RAYON_NUM_THREADS", threads.to_string());
    if let Some(g) = gpu {
        cmd.env("CUDA_VISIBLE_DEVICES", g);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
}

/// Reads the child's stderr on a thread of its own: progress lines become events, the
/// rest is kept for the error message; then waits for the child.
fn watch(mut child: Child, slot: usize, tx: mpsc::Sender<Event>) {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut kept = String::new();
        if let Some(err) = stderr {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                match parse_progress(&line) {
                    Some((epoch, step, steps)) => {
                        let _ = tx.send(Event::Step { slot, epoch, step, steps });
                    }
                    None => {
                        kept.push_str(&line);
                        kept.push('\n');
                    }
                }
            }
        }
        let status = child.wait();
        let _ = tx.send(Event::Exited { slot, status, stderr: kept });
    });
}

/// `cnnc-progress epoch E/N step S/M` → (E, S, M).
fn parse_progress(line: &str) -> Option<(usize, usize, usize)> {
    let rest = line.strip_prefix(PROGRESS_PREFIX)?;
    let mut words = rest.split_whitespace();
    let (Some("epoch"), Some(e), Some("step"), Some(s)) = (words.next(), words.next(), words.next(), words.next()) else {
        return None;
    };
    let epoch = e.split_once('/')?.0.parse().ok()?;
    let (step, steps) = s.split_once('/')?;
    Some((epoch, step.parse().ok()?, steps.parse().ok()?))
}

/// Asks a `cnnc train` process to checkpoint and stop.
fn terminate(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we started and have not yet waited for.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// The last lines of a child's stderr, for an error message.
fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Marks `run` failed (`FAILED`, with the message) and returns the report line.
fn fail(run: &RunSpec, message: &str) -> String {
    let _ = std::fs::create_dir_all(&run.dir);
    let _ = crate::write_atomic(&run.dir.join(FAILED), format!("{message}\n").as_bytes());
    format!("{}: {message}", run.name())
}

/// What a person sees: a bar on a terminal, else lines.
struct View<'a> {
    exp: &'a Experiment,
    bar: Option<indicatif::ProgressBar>,
    /// Runs finished (done or diverged), of `exp.runs.len()`.
    finished: usize,
    started: Instant,
}

/// Bar units per epoch (the bar's length is epochs × this, so that steps show).
const UNITS: u64 = 1000;

impl<'a> View<'a> {
    fn new(exp: &'a Experiment, quiet: bool) -> View<'a> {
        let epochs = exp.config.epochs;
        let finished = exp.runs.iter().filter(|r| !needs_training(exp, r)).count();
        let epochs_done: usize = exp.runs.iter().map(|r| epochs_of(exp, r)).sum();
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new((exp.runs.len() * epochs) as u64 * UNITS);
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {msg} eta {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(format!("runs {finished}/{}", exp.runs.len()));
            b.set_position(epochs_done as u64 * UNITS);
            b.reset_eta();
            b
        });
        let v = View { exp, bar, finished, started: Instant::now() };
        v.note(&format!("{} runs, {} finished, {} to train", exp.runs.len(), finished, exp.runs.len() - finished));
        v
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(format!("experiment: {line}")),
            None => eprintln!("experiment: {line}"),
        }
    }

    fn started(&self, run: &RunSpec) {
        let done = epochs_of(self.exp, run);
        self.note(&format!("{} started ({done}/{} epochs done)", run.name(), self.exp.config.epochs));
    }

    fn epoch_done(&self, run: &RunSpec) {
        if self.bar.is_none() {
            let r = result_of(run);
            let acc = r.val_accuracy.last().map_or("–".into(), |a| format!("{:.2} %", 100.0 * a));
            self.note(&format!("{}: epoch {}/{} done, val accuracy {acc}", run.name(), r.val_accuracy.len(), self.exp.config.epochs));
        }
    }

    fn finished(&mut self, run: &RunSpec) {
        self.finished += 1;
        let r = result_of(run);
        let how =
            if r.diverged { "diverged".to_string() } else { r.best().map_or("done".into(), |b| format!("done, best {:.2} %", 100.0 * b)) };
        self.note(&format!(
            "{}: {how} ({}/{} runs, {:.0} s)",
            run.name(),
            self.finished,
            self.exp.runs.len(),
            self.started.elapsed().as_secs_f64()
        ));
    }

    fn draw(&self, slots: &[Option<Slot>]) {
        let Some(b) = &self.bar else { return };
        let mut units = 0;
        let mut msg = Vec::new();
        for s in slots.iter().flatten() {
            let run = &self.exp.runs[s.run];
            if s.steps > 0 {
                // The epoch in flight, until its metrics line makes it a whole one.
                if s.epoch > epochs_of(self.exp, run) {
                    units += (s.step as u64 * UNITS) / s.steps as u64;
                }
                msg.push(format!("{} epoch {}/{} step {}/{}", run.name(), s.epoch, self.exp.config.epochs, s.step, s.steps));
            } else {
                msg.push(format!("{} starting", run.name()));
            }
        }
        let whole: usize = self.exp.runs.iter().map(|r| epochs_of(self.exp, r)).sum();
        b.set_prefix(format!("runs {}/{}", self.finished, self.exp.runs.len()));
        b.set_message(msg.join(" | "));
        b.set_position(whole as u64 * UNITS + units);
    }

    fn close(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Epochs a run has done, counting a finished or diverged run as complete (for the bar).
fn epochs_of(exp: &Experiment, run: &RunSpec) -> usize {
    let r = result_of(run);
    if r.diverged {
        exp.config.epochs
    } else {
        r.val_accuracy.len().min(exp.config.epochs)
    }
}
