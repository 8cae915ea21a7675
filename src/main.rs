//! `harness`: parse arguments, run, turn the result into an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `harness status DIR | head` ends quietly, as Unix tools do, instead of failing to print.
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // A bug must still read as an error message, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (a bug in ohem-harness): {info}");
    }));
    match ohem_harness::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ohem_harness::rundir::RunDirBusy>().is_some() {
                return ExitCode::from(ohem_harness::harness::EXIT_LOCKED as u8);
            }
            if e.downcast_ref::<ohem_harness::rundir::Preempted>().is_some() {
                return ExitCode::from(ohem_harness::rundir::EXIT_PREEMPTED as u8);
            }
            ExitCode::FAILURE
        }
    }
}
