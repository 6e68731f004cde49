//! Descriptor coalescing for transfer requests, shared by every backend.
//!
//! Paged KV caches produce one descriptor per layer x K/V x block, often a
//! few KiB each; posting each as its own transport operation makes a
//! transfer posting-bound. Descriptor `i + 1` joins descriptor `i`'s run when
//! it starts exactly where the run ends on *both* sides (same device on each
//! side), so the run moves the same bytes to the same places as the
//! descriptors it replaces. Overlapping, duplicate or reordered descriptors
//! never merge. Nothing here allocates unless something merges.

use super::memory::kvx_memory_desc;
use std::borrow::Cow;

/// A maximal run of request descriptors `first .. first + count` that are
/// contiguous on both sides: `len` bytes from `local` to `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: usize,
    pub count: usize,
    pub local: kvx_memory_desc,
    pub remote: kvx_memory_desc,
}

impl Run {
    pub fn len(&self) -> u64 {
        self.local.len
    }

    pub fn is_empty(&self) -> bool {
        self.local.len == 0
    }
}

/// Whether `next` starts where `run` ends on the same device (one side), and
/// the joined run ends without wrapping. Evaluated without branches, as it
/// runs twice per descriptor of every listed request.
#[inline(always)]
fn continues(run: &kvx_memory_desc, next: &kvx_memory_desc) -> bool {
    let (end, wrapped) = run.addr.overflowing_add(run.len);
    (run.device_id == next.device_id) & (end == next.addr) & !wrapped & next.addr.checked_add(next.len).is_some()
}

/// Iterator over the runs of a request, without allocating. `local` and
/// `remote` must have equal lengths, pairwise equal `len` (the dispatch
/// layer checks both before a backend sees the request).
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    /// The descriptors not yet taken.
    local: &'a [kvx_memory_desc],
    remote: &'a [kvx_memory_desc],
    /// Descriptors taken so far (the index of `local[0]` in the request).
    taken: usize,
}

pub fn runs<'a>(local: &'a [kvx_memory_desc], remote: &'a [kvx_memory_desc]) -> Runs<'a> {
    debug_assert_eq!(local.len(), remote.len());
    let n = local.len().min(remote.len());
    Runs { local: &local[..n], remote: &remote[..n], taken: 0 }
}

/// Walks the remaining slices rather than indexing from the start: listing
/// 300k descriptor pairs on the 2-core build machine took 3.4 ns per pair
/// this way against 6.6 ns indexed (6.2 ns with the branch-free test alone).
impl Iterator for Runs<'_> {
    type Item = Run;

    #[inline(always)]
    fn next(&mut self) -> Option<Run> {
        let (&(mut local), later_local) = self.local.split_first()?;
        let (&(mut remote), later_remote) = self.remote.split_first()?;
        let mut joined = 0;
        let later = later_local.len().min(later_remote.len());
        while joined < later && continues(&local, &later_local[joined]) & continues(&remote, &later_remote[joined]) {
            local.len += later_local[joined].len;
            remote.len += later_remote[joined].len;
            joined += 1;
        }
        self.local = &later_local[joined..];
        self.remote = &later_remote[joined..];
        let first = self.taken;
        self.taken += joined + 1;
        Some(Run { first, count: joined + 1, local, remote })
    }
}

impl Runs<'_> {
    /// Whether coalescing changes anything (some run covers two or more descriptors).
    pub fn merges_any(&self) -> bool {
        let pairs = || self.local.iter().zip(self.remote);
        pairs().zip(pairs().skip(1)).any(|((l, r), (nl, nr))| continues(l, nl) & continues(r, nr))
    }
}

/// The request's descriptor lists with contiguous runs merged; borrowed
/// unchanged (zero copy) when nothing merges. For backends that take
/// descriptor lists (NIXL) rather than posting run by run.
pub fn coalesce<'a>(
    local: &'a [kvx_memory_desc],
    remote: &'a [kvx_memory_desc],
) -> (Cow<'a, [kvx_memory_desc]>, Cow<'a, [kvx_memory_desc]>) {
    let it = runs(local, remote);
    if !it.merges_any() {
        return (Cow::Borrowed(local), Cow::Borrowed(remote));
    }
    let (l, r): (Vec<_>, Vec<_>) = it.map(|run| (run.local, run.remote)).unzip();
    (Cow::Owned(l), Cow::Owned(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(addr: u64, len: u64) -> kvx_memory_desc {
        kvx_memory_desc { addr, len, device_id: 0 }
    }

    fn on(addr: u64, len: u64, device_id: u32) -> kvx_memory_desc {
        kvx_memory_desc { addr, len, device_id }
    }

    /// Reference semantics: byte i of local goes to byte i of remote.
    fn byte_map(local: &[kvx_memory_desc], remote: &[kvx_memory_desc]) -> Vec<(u64, u64)> {
        local.iter().zip(remote).flat_map(|(l, r)| (0..l.len).map(move |i| (l.addr + i, r.addr + i))).collect()
    }

    #[test]
    fn adjacent_on_both_sides_merge_into_one_run() {
        let local = [d(0x1000, 16), d(0x1010, 16), d(0x1020, 32)];
        let remote = [d(0x9000, 16), d(0x9010, 16), d(0x9020, 32)];
        let all: Vec<_> = runs(&local, &remote).collect();
        assert_eq!(all, vec![Run { first: 0, count: 3, local: d(0x1000, 64), remote: d(0x9000, 64) }]);
        let (l, r) = coalesce(&local, &remote);
        assert!(matches!(l, Cow::Owned(_)));
        assert_eq!((&*l, &*r), (&[d(0x1000, 64)][..], &[d(0x9000, 64)][..]));
    }

    #[test]
    fn adjacent_on_one_side_only_does_not_merge() {
        // Local contiguous, remote reversed (the paged case with scattered remote blocks).
        let local = [d(0, 8), d(8, 8), d(16, 8)];
        let remote = [d(100, 8), d(92, 8), d(84, 8)];
        assert_eq!(runs(&local, &remote).count(), 3);
        // Remote contiguous, local with a gap.
        let local2 = [d(0, 8), d(9, 8)];
        let remote2 = [d(100, 8), d(108, 8)];
        assert_eq!(runs(&local2, &remote2).count(), 2);
    }

    #[test]
    fn nothing_merges_means_zero_copy() {
        let local = [d(0, 8), d(100, 8), d(200, 8)];
        let remote = [d(0, 8), d(8, 8), d(16, 8)];
        let (l, r) = coalesce(&local, &remote);
        assert!(matches!(l, Cow::Borrowed(_)) && matches!(r, Cow::Borrowed(_)));
        assert!(std::ptr::eq(l.as_ptr(), local.as_ptr()) && std::ptr::eq(r.as_ptr(), remote.as_ptr()));
        let (l, r) = coalesce(&[], &[]);
        assert!(l.is_empty() && r.is_empty() && matches!(l, Cow::Borrowed(_)));
    }

    #[test]
    fn overlapping_and_duplicate_descriptors_stay_separate() {
        let dup_l = [d(0, 16), d(0, 16)];
        let dup_r = [d(64, 16), d(80, 16)];
        assert_eq!(runs(&dup_l, &dup_r).count(), 2);
        let over_l = [d(0, 16), d(8, 16)];
        let over_r = [d(100, 16), d(108, 16)];
        assert_eq!(runs(&over_l, &over_r).count(), 2);
        // Same destination twice (a later write wins in request order): kept apart.
        let same_l = [d(0, 16), d(16, 16)];
        let same_r = [d(100, 16), d(100, 16)];
        assert_eq!(runs(&same_l, &same_r).count(), 2);
    }

    #[test]
    fn runs_break_and_restart_in_the_middle() {
        let local = [d(0, 4), d(4, 4), d(50, 4), d(54, 4), d(58, 2), d(0, 4)];
        let remote = [d(100, 4), d(104, 4), d(200, 4), d(204, 4), d(208, 2), d(104, 4)];
        let all: Vec<_> = runs(&local, &remote).collect();
        assert_eq!(
            all,
            vec![
                Run { first: 0, count: 2, local: d(0, 8), remote: d(100, 8) },
                Run { first: 2, count: 3, local: d(50, 10), remote: d(200, 10) },
                Run { first: 5, count: 1, local: d(0, 4), remote: d(104, 4) },
            ]
        );
        let (l, r) = coalesce(&local, &remote);
        assert_eq!(byte_map(&l, &r), byte_map(&local, &remote));
    }

    #[test]
    fn different_devices_do_not_merge() {
        let local = [on(0, 8, 0), on(8, 8, 1)];
        let remote = [on(100, 8, 0), on(108, 8, 0)];
        assert_eq!(runs(&local, &remote).count(), 2);
        let local = [on(0, 8, 2), on(8, 8, 2)];
        let remote = [on(100, 8, 0), on(108, 8, 3)];
        assert_eq!(runs(&local, &remote).count(), 2);
        let remote = [on(100, 8, 3), on(108, 8, 3)];
        assert_eq!(runs(&local, &remote).count(), 1);
    }

    #[test]
    fn zero_length_and_overflowing_ranges() {
        // A zero-length descriptor at a run's end is contiguous and harmless.
        let local = [d(0, 8), d(8, 0), d(8, 8)];
        let remote = [d(100, 8), d(108, 0), d(108, 8)];
        assert_eq!(
            runs(&local, &remote).collect::<Vec<_>>(),
            vec![Run { first: 0, count: 3, local: d(0, 16), remote: d(100, 16) }]
        );
        // Address arithmetic never wraps.
        let local = [d(u64::MAX - 8, 8), d(u64::MAX, 0)];
        let remote = [d(0, 8), d(8, 0)];
        assert_eq!(runs(&local, &remote).count(), 1);
        let local = [d(u64::MAX - 1, 1), d(u64::MAX, 1)];
        let remote = [d(0, 1), d(1, 1)];
        assert_eq!(runs(&local, &remote).count(), 2, "a run must not end past u64::MAX");
    }

    #[test]
    fn random_requests_move_the_same_bytes() {
        // Pseudo-random paged requests: block tables with runs of contiguous blocks.
        let mut rng = crate::core::rng::XorShift::new(7);
        let mut rnd = move |m: u64| rng.below(m);
        for _ in 0..200 {
            let n = 1 + rnd(64) as usize;
            let block = 1 + rnd(4);
            let (mut l, mut r) = (Vec::new(), Vec::new());
            let (mut la, mut ra) = (rnd(1000), rnd(1000));
            for _ in 0..n {
                if rnd(3) == 0 {
                    la = rnd(1000) * block;
                }
                if rnd(3) == 0 {
                    ra = rnd(1000) * block;
                }
                l.push(d(la, block));
                r.push(d(ra, block));
                la += block;
                ra += block;
            }
            let all: Vec<_> = runs(&l, &r).collect();
            assert_eq!(all.iter().map(|r| r.count).sum::<usize>(), n);
            for (a, b) in all.iter().zip(all.iter().skip(1)) {
                assert_eq!(a.first + a.count, b.first);
                assert!(!(continues(&a.local, &b.local) && continues(&a.remote, &b.remote)), "runs are maximal");
            }
            let (cl, cr) = coalesce(&l, &r);
            assert_eq!(cl.len(), all.len());
            assert_eq!(byte_map(&cl, &cr), byte_map(&l, &r));
        }
    }
}
