//! Splitting one long descriptor list over a few threads: checking and
//! listing 300k descriptors is memory-bound on one core, so requests this
//! long are cut into contiguous slices, one per thread (the caller's included).

/// Lists shorter than this stay on the calling thread (a thread costs more than it saves).
pub const PARALLEL_MIN: usize = 32 * 1024;
/// Threads one request uses at most, the caller's included.
pub const MAX_THREADS: usize = 8;

/// `f(0..n)`, on `n` threads (the caller's included), results in order.
pub fn on_threads<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if n <= 1 {
        return vec![f(0)];
    }
    std::thread::scope(|scope| {
        let f = &f;
        let others: Vec<_> = (1..n).map(|i| scope.spawn(move || f(i))).collect();
        let mut out = vec![f(0)];
        out.extend(others.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))));
        out
    })
}

/// Index ranges covering `0..count` in order, one per thread.
pub fn slices(count: usize) -> Vec<std::ops::Range<usize>> {
    let threads = if count < PARALLEL_MIN {
        1
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
        cores.min(MAX_THREADS).min(count / (PARALLEL_MIN / 4)).max(1)
    };
    let per = count.div_ceil(threads);
    (0..threads).map(|i| (i * per).min(count)..((i + 1) * per).min(count)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_index_once_in_order() {
        for count in [0usize, 1, 5, PARALLEL_MIN - 1, PARALLEL_MIN, 327_680, 327_683] {
            let parts = slices(count);
            assert_eq!(parts.first().unwrap().start, 0);
            assert_eq!(parts.last().unwrap().end, count);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start), "{count}: {parts:?}");
            assert!(parts.len() <= MAX_THREADS);
        }
        assert_eq!(slices(PARALLEL_MIN - 1).len(), 1);
    }

    #[test]
    fn threads_return_results_in_order() {
        assert_eq!(on_threads(3, |i| i * 10), vec![0, 10, 20]);
        assert_eq!(on_threads(1, |i| i + 1), vec![1]);
    }
}
