//! Two threads at the lowest CPU priority (nice 19) for the work that must
//! never take a core from redirects: building reports (the embedded store's
//! report reads, grouping, rendering). When a redirect wants a core, the
//! scheduler hands it over at once; reports run on what redirects leave.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Threads of the pool: reports are few at once (`report.max_concurrent`),
/// and a job queued behind another waits without holding a core.
const THREADS: usize = 2;

/// Runs `work` on a low-priority thread and answers with its result; a
/// panic in `work` is raised again here.
pub async fn run<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = answer.send(catch_unwind(AssertUnwindSafe(work)));
    });
    pool()
        .send(job)
        .expect("the low-priority threads live as long as the process");
    match answered.await.expect("a low-priority job always answers") {
        Ok(value) => value,
        Err(panic) => resume_unwind(panic),
    }
}

fn pool() -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..THREADS {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("lastclick-low-{i}"))
                .spawn(move || work_through(&queue))
                .expect("a thread can be started");
        }
        jobs
    })
}

fn work_through(queue: &Mutex<Receiver<Job>>) {
    lower_own_priority();
    loop {
        let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job();
    }
}

/// nice 19 for the calling thread (on Linux a thread has its own nice
/// value). Raising one's nice value needs no privilege; should it fail,
/// the pool still works, at normal priority.
fn lower_own_priority() {
    // SAFETY: setpriority only reads its arguments; 0 names this thread.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0;
    if failed {
        tracing::warn!("cannot lower the report threads' CPU priority");
    }
}

/// This thread's nice value.
#[cfg(test)]
fn own_nice() -> i32 {
    // SAFETY: as above; getpriority returns the value (errno is not needed:
    // the tests only compare with 19).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn jobs_run_at_nice_19_and_answer() {
        assert_eq!(super::run(|| 2 + 2).await, 4);
        assert_eq!(super::run(super::own_nice).await, 19);
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn a_panic_is_raised_in_the_caller() {
        super::run(|| panic!("boom")).await
    }
}
