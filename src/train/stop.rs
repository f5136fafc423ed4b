//! Stopping a run cleanly: a process-wide flag that the epoch loop reads after every step.
//!
//! [`on_signals`] sets it on SIGTERM (Slurm's time limit, `scancel`, preemption), SIGUSR1
//! (what `sbatch --signal=B:USR1@SECS` sends ahead of the limit) and the first SIGINT
//! (Ctrl-C; a second one ends the process at once, as it would without this). The loop
//! then writes a checkpoint and `cnnc train` exits with [`EXIT_INTERRUPTED`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// `cnnc train`'s exit status after a stop: the run is checkpointed and resumable
/// (75 is sysexits' EX_TEMPFAIL, "try again later").
pub const EXIT_INTERRUPTED: u8 = 75;

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Whether a stop was requested (by a signal or [`request`]).
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// Asks the running loop to stop after its current step, as a signal would.
pub fn request() {
    flag().store(true, Ordering::Relaxed);
}

/// Installs the signal handlers (they only set the flag: async-signal-safe). Unix only;
/// elsewhere a no-op, and a signal ends the process as before.
pub fn on_signals() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        // Registered before the flag itself, so that it sees the flag still unset the first
        // time: the second SIGINT exits with 130 (128 + SIGINT, what a shell reports).
        signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(flag()))?;
        for sig in [SIGINT, SIGTERM, SIGUSR1] {
            signal_hook::flag::register(sig, Arc::clone(flag()))?;
        }
    }
    Ok(())
}
