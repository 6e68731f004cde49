//! A few-second smoke run of kvxfer-bench (kvxfer on UCX only, with and without counting, tiny cases):
//! the benchmark builds, its processes talk, and it reports every case.
//! Performance is never judged here; `scripts/bench.sh` runs the comparison.

use std::process::Command;

#[test]
fn kvxfer_bench_runs_and_reports_every_case() {
    let dir = std::env::temp_dir().join(format!("kvxfer-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("results.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_kvxfer-bench"))
        .args([
            "--systems",
            "kvxfer-ucx,kvxfer-ucx-ab",
            "--layouts",
            "raw,staging,paged",
            "--sizes",
            "4k,64k",
            "--counts",
            "1,16",
        ])
        .args(["--models", "llama3-8b", "--tp", "8", "--prompts", "256", "--time", "0.02", "--latency-iters", "50"])
        .args(["--reg-count", "50", "--reg-large", "1m", "--pool", "8m", "--csv"])
        .arg(&csv)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let table = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = table.lines().skip(1).collect();
    // 2 sizes x 2 counts + staging + paged, for WRITE and READ; latency; 2 registration rows.
    let transfers = rows.iter().filter(|r| r.contains(",transfer,")).count();
    // kvxfer-ucx, and the same cases with counting on and off (kvxfer-ucx-ab-on, -ab-off).
    assert_eq!(transfers, 3 * 12, "{table}");
    assert!(text.contains("Cost of counting, kvxfer-ucx") && text.contains("ns of CPU"), "{text}");
    assert!(rows.iter().any(|r| r.contains(",latency,")), "{table}");
    assert_eq!(rows.iter().filter(|r| r.contains(",register,")).count(), 2, "{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split(',').collect();
    let error = header.iter().position(|c| *c == "error");
    for r in &rows {
        let cells: Vec<&str> = r.split(',').collect();
        assert!(error.map_or(true, |e| cells.get(e).map_or(true, |c| c.is_empty())), "a case failed: {r}");
    }
    assert!(text.contains("GOAL paged 4-32 KiB descriptors"), "the goals are printed: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
