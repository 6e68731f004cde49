//! Both backends merge descriptors contiguous on both sides into one
//! operation: the bytes that land must be exactly those of the request as
//! written, including runs that cross registered regions, duplicates and
//! unregistered pieces hidden inside an otherwise contiguous run.

mod common;
use common::*;
use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::kvx_status::*;

fn d(addr: u64, len: u64) -> kvx_memory_desc {
    kvx_memory_desc { addr, len, device_id: 0 }
}

/// What `dst` must hold after copying each (src offset, dst offset, len) in order.
fn expected(src: &[u8], dst: &[u8], pieces: &[(u64, u64, u64)]) -> Vec<u8> {
    let mut out = dst.to_vec();
    for &(s, t, n) in pieces {
        out[t as usize..(t + n) as usize].copy_from_slice(&src[s as usize..(s + n) as usize]);
    }
    out
}

#[test]
fn paged_requests_with_contiguous_runs_move_exact_bytes() {
    let a0 = Agent::new("c0");
    let a1 = Agent::new("c1");
    const BLOCK: u64 = 4096;
    const BLOCKS: u64 = 256;
    let src = pattern((BLOCK * BLOCKS) as usize, 3);
    let dst = vec![0u8; (BLOCK * BLOCKS) as usize];
    let ls = a0.register(&[&src])[0].addr;
    let rd = a1.register(&[&dst])[0].addr;
    ok(a0.load_by_info("c1", &a1.conn_info()));
    // Block tables: runs of consecutive blocks on both sides, broken at random.
    let mut rng = XorShift::new(1);
    let mut rnd = move |m: u64| rng.below(m);
    let mut pieces = Vec::new();
    let (mut sb, mut db) = (0u64, 7u64);
    for _ in 0..200 {
        if rnd(4) == 0 {
            sb = rnd(BLOCKS);
        }
        if rnd(4) == 0 {
            db = rnd(BLOCKS);
        }
        pieces.push((sb % BLOCKS * BLOCK, db % BLOCKS * BLOCK, BLOCK));
        sb += 1;
        db += 1;
    }
    // Distinct destinations only: with two writes to one place, UCX gives no order.
    let mut seen = std::collections::HashSet::new();
    pieces.retain(|p| seen.insert(p.1));
    let local: Vec<_> = pieces.iter().map(|&(s, _, n)| d(ls + s, n)).collect();
    let remote: Vec<_> = pieces.iter().map(|&(_, t, n)| d(rd + t, n)).collect();
    let want = expected(&src, &dst, &pieces);
    a0.submit(WRITE, &local, &remote, "c1", None).unwrap().expect_success();
    assert!(dst == want, "WRITE moved the wrong bytes");
    // READ back into a fresh buffer along the same block tables.
    let back = vec![0u8; src.len()];
    let lb = a0.register(&[&back])[0].addr;
    let local_back: Vec<_> = pieces.iter().map(|&(s, _, n)| d(lb + s, n)).collect();
    a0.submit(READ, &local_back, &remote, "c1", None).unwrap().expect_success();
    for &(s, _, n) in &pieces {
        assert!(back[s as usize..(s + n) as usize] == src[s as usize..(s + n) as usize], "READ piece at {s}");
    }
}

#[test]
fn runs_across_adjacent_regions_and_duplicates() {
    let a0 = Agent::new("r0");
    let a1 = Agent::new("r1");
    let src = pattern(8192, 9);
    let dst = vec![0u8; 8192];
    let (s, t) = (src.as_ptr() as u64, dst.as_ptr() as u64);
    // Two adjacent registrations on each side: a contiguous run crosses from one into the other.
    a0.register(&[&src[..4096], &src[4096..]]);
    a1.register(&[&dst[..4096], &dst[4096..]]);
    ok(a0.load("r1", &a1.desc()));
    let local = [d(s + 2048, 2048), d(s + 4096, 2048), d(s, 16), d(s, 16)];
    let remote = [d(t + 2048, 2048), d(t + 4096, 2048), d(t + 100, 16), d(t + 200, 16)];
    a0.submit(WRITE, &local, &remote, "r1", None).unwrap().expect_success();
    let want = expected(&src, &vec![0u8; 8192], &[(2048, 2048, 4096), (0, 100, 16), (0, 200, 16)]);
    assert!(dst == want);
}

#[test]
fn an_unregistered_piece_inside_a_run_fails_before_anything_moves() {
    let a0 = Agent::new("u0");
    let a1 = Agent::new("u1");
    let src = pattern(3 * 4096, 5);
    let dst = vec![0u8; 3 * 4096];
    let (s, t) = (src.as_ptr() as u64, dst.as_ptr() as u64);
    // The middle page is not registered on the remote side.
    a0.register(&[&src]);
    a1.register(&[&dst[..4096], &dst[8192..]]);
    ok(a0.load("u1", &a1.desc()));
    let local = [d(s, 4096), d(s + 4096, 4096), d(s + 8192, 4096)];
    let remote = [d(t, 4096), d(t + 4096, 4096), d(t + 8192, 4096)];
    let err = a0.submit(WRITE, &local, &remote, "u1", None).err().expect("must be refused");
    assert_eq!(err.0, KVX_ERR_NOT_REGISTERED, "{}", err.1);
    assert!(err.1.contains("descriptor 1"), "the failing descriptor is named: {}", err.1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(dst.iter().all(|&b| b == 0), "nothing may be posted when validation fails");
}
