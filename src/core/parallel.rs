//! Splitting one long descriptor list over a few threads: checking and
//! listing 300k descriptors is memory-bound on one core, so requests this
//! long are cut into contiguous slices, one per thread (the caller's included).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};

/// Descriptors each thread takes at least, so lists shorter than twice this
/// stay on the calling thread: handing a job to a pool thread costs 15-25 us
/// (p50, 35-45 us p99, on the H200 host), and checking or listing a
/// descriptor 2-4 ns, so a thread pays for itself only with tens of
/// thousands of descriptors.
pub const PARALLEL_MIN: usize = 32 * 1024;
/// Threads one request uses at most, the caller's included.
pub const MAX_THREADS: usize = 8;

/// `f(0..n)`, on `n` threads (the caller's included), results in order.
/// The other threads come from a pool kept for the life of the process:
/// starting threads per request would cost more than the listing they do.
/// `f` must not call `on_threads` itself (its jobs could wait on each other).
pub fn on_threads<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if n <= 1 {
        return vec![f(0)];
    }
    if cfg!(miri) {
        // Miri ends a run that leaves threads behind, as the pool does: scoped threads there.
        return std::thread::scope(|scope| {
            let f = &f;
            let others: Vec<_> = (1..n).map(|i| scope.spawn(move || f(i))).collect();
            let mut out = vec![f(0)];
            out.extend(others.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))));
            out
        });
    }
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let out = SendPtr(results.as_mut_ptr());
    let run = |i: usize| {
        let value = f(i);
        // SAFETY: each index is written by exactly one job, and `results` outlives every job (waited for below).
        unsafe { *out.get().add(i) = Some(value) };
    };
    let latch = Latch::new(n - 1);
    {
        let run: &(dyn Fn(usize) + Sync) = &run;
        // SAFETY: the lifetime is erased only while the jobs run: this function does not
        // return (nor unwind) before `latch.wait()` has seen every job finish.
        let run: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(run) };
        let latch_ref: &'static Latch = unsafe { std::mem::transmute(&latch) };
        for i in 1..n {
            pool().send(Job { run, index: i, latch: latch_ref });
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(0)));
        let panicked = latch.wait();
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if panicked {
            panic!("a listing thread panicked");
        }
    }
    results.into_iter().map(|r| r.expect("every job ran")).collect()
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// Counts jobs down; records whether one panicked.
struct Latch {
    state: Mutex<(usize, bool)>,
    done: Condvar,
}

impl Latch {
    fn new(jobs: usize) -> Latch {
        Latch { state: Mutex::new((jobs, false)), done: Condvar::new() }
    }
    fn finish(&self, panicked: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        s.1 |= panicked;
        if s.0 == 0 {
            self.done.notify_all();
        }
    }
    /// Wait for every job; whether one panicked.
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 > 0 {
            s = self.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.1
    }
}

struct Job {
    run: &'static (dyn Fn(usize) + Sync),
    index: usize,
    latch: &'static Latch,
}

/// One job queue per pool thread, so handing out jobs never waits on another
/// thread's wake-up; callers start at different threads in turn.
struct Pool {
    queues: Vec<Mutex<mpsc::Sender<Job>>>,
    next: AtomicUsize,
}

impl Pool {
    fn send(&self, job: Job) {
        let queue = self.queues.get(self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len().max(1));
        let sent = match queue {
            Some(q) => q.lock().unwrap_or_else(|e| e.into_inner()).send(job),
            None => Err(mpsc::SendError(job)),
        };
        if let Err(mpsc::SendError(job)) = sent {
            // No pool thread is left: run it here rather than never.
            run_job(job);
        }
    }
}

fn run_job(job: Job) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(job.index)));
    job.latch.finish(outcome.is_err());
}

/// The pool: `MAX_THREADS - 1` threads (fewer on small hosts), started on first use.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
        let mut queues = Vec::new();
        for i in 0..cores.clamp(2, MAX_THREADS) - 1 {
            let (tx, rx) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new().name(format!("kvx-list-{i}")).spawn(move || {
                while let Ok(job) = rx.recv() {
                    run_job(job);
                }
            });
            if started.is_ok() {
                queues.push(Mutex::new(tx));
            }
        }
        Pool { queues, next: AtomicUsize::new(0) }
    })
}

/// Index ranges covering `0..count` in order, one per thread.
pub fn slices(count: usize) -> Vec<std::ops::Range<usize>> {
    let threads = if count < 2 * PARALLEL_MIN {
        1
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
        cores.min(MAX_THREADS).min(count / PARALLEL_MIN).max(1)
    };
    let per = count.div_ceil(threads);
    (0..threads).map(|i| (i * per).min(count)..((i + 1) * per).min(count)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_index_once_in_order() {
        for count in [0usize, 1, 5, PARALLEL_MIN - 1, PARALLEL_MIN, 2 * PARALLEL_MIN, 327_680, 327_683] {
            let parts = slices(count);
            assert_eq!(parts.first().unwrap().start, 0);
            assert_eq!(parts.last().unwrap().end, count);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start), "{count}: {parts:?}");
            assert!(parts.len() <= MAX_THREADS);
        }
        assert_eq!(slices(2 * PARALLEL_MIN - 1).len(), 1);
        if std::thread::available_parallelism().map_or(1, |p| p.get()) >= 2 {
            assert_eq!(slices(2 * PARALLEL_MIN).len(), 2);
        }
    }

    #[test]
    fn threads_return_results_in_order() {
        assert_eq!(on_threads(3, |i| i * 10), vec![0, 10, 20]);
        assert_eq!(on_threads(1, |i| i + 1), vec![1]);
        assert_eq!(on_threads(MAX_THREADS + 3, |i| i), (0..MAX_THREADS + 3).collect::<Vec<_>>());
    }

    #[test]
    #[cfg_attr(miri, ignore = "400 rounds of threads: too slow under Miri")]
    fn many_callers_share_the_pool_and_borrow_their_own_data() {
        let callers: Vec<_> = (0..8u64)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..50u64 {
                        let data: Vec<u64> = (0..1000).map(|i| i * c + round).collect();
                        let sums = on_threads(4, |i| data[i * 250..(i + 1) * 250].iter().sum::<u64>());
                        assert_eq!(sums.iter().sum::<u64>(), data.iter().sum::<u64>());
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_job_panics_the_caller_after_every_job_finished() {
        let finished = std::sync::atomic::AtomicUsize::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_threads(4, |i| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i == 2 {
                    panic!("job 2");
                }
            })
        }));
        assert!(outcome.is_err());
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 4);
    }
}
