//! Threads of their own for the CPU-heavy work of persists and compaction (sorting, encoding,
//! merging), at a lower OS priority than everything else. On a small machine a persist of a
//! million rows takes a core for a second; at the same priority it took the CPU that
//! acknowledging messages needs (measured with `twinlake bench ingest` on 2 cores: p99
//! publish-to-acknowledged 202 ms with persists running, 14 ms without them). Niced, it uses
//! what ingest leaves, and ingest still gets ahead of it whenever both want a core.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

/// How much lower than the rest (Linux nice, 19 the lowest).
const NICENESS: i32 = 10;

pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Where jobs go; None when no thread could be started (jobs then run where they are sent).
static JOBS: OnceLock<Option<Mutex<Sender<Job>>>> = OnceLock::new();

/// Runs `job` on a lake work thread; hands it back when there is none.
pub(crate) fn submit(job: Job) -> Result<(), Job> {
    let jobs = JOBS.get_or_init(start);
    let Some(jobs) = jobs else {
        return Err(job);
    };
    let Ok(sender) = jobs.lock() else {
        return Err(job);
    };
    sender.send(job).map_err(|failed| failed.0)
}

/// Half the cores (at least one): persists and compaction never take all of them.
fn start() -> Option<Mutex<Sender<Job>>> {
    let (sender, receiver) = mpsc::channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let mut started = 0;
    for n in 0..threads {
        let receiver = Arc::clone(&receiver);
        let spawned = std::thread::Builder::new()
            .name(format!("twinlake-lake-{n}"))
            .spawn(move || work(&receiver));
        match spawned {
            Ok(_) => started += 1,
            Err(error) => tracing::warn!(%error, "could not start a lake work thread"),
        }
    }
    (started > 0).then(|| Mutex::new(sender))
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let next = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else {
            return;
        };
        // A panicking job drops its result sender, which its waiter reports; the thread lives.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // Linux keeps a nice value per thread: this one only.
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), NICENESS) {
        tracing::debug!(%error, "could not lower the priority of a lake work thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    #[test]
    fn jobs_run_and_a_panicking_one_leaves_the_threads_working() {
        let (done, results) = std::sync::mpsc::channel();
        let failing = done.clone();
        let panics: super::Job = Box::new(move || {
            let _keep = failing;
            panic!("a job that fails");
        });
        assert!(super::submit(panics).is_ok());
        for n in 0..4 {
            let done = done.clone();
            assert!(super::submit(Box::new(move || done.send(n).unwrap_or(()))).is_ok());
        }
        drop(done);
        let mut got: Vec<i32> = results.iter().collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3]);
    }
}
