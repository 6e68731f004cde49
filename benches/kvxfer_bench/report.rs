//! Raw `ucx_perftest` runs, the comparison table, the goal ratios and the
//! JSON/CSV files.

use crate::workload::{human, parse_size};
use crate::{Opts, Row};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `ucx_perftest` and its library folder from the `libucx` wheel (`KVX_UCX_PERFTEST` overrides).
fn perftest_paths() -> Result<(PathBuf, PathBuf), String> {
    if let Some(p) = std::env::var_os("KVX_UCX_PERFTEST") {
        let p = PathBuf::from(p);
        let lib = p.parent().and_then(|b| b.parent()).map(|r| r.join("lib")).unwrap_or_default();
        return Ok((p, lib));
    }
    let out = Command::new("python3")
        .args(["-c", "import libucx, os; print(os.path.dirname(libucx.__file__))"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let bin = root.join("bin/ucx_perftest");
    if !bin.exists() {
        return Err("ucx_perftest not found (pip install libucx-cu12, or set KVX_UCX_PERFTEST)".into());
    }
    Ok((bin, root.join("lib")))
}

/// One server/client pair, both bounded by `timeout`; the client's "Final:" fields.
fn perftest_once(test: &str, size: u64, iters: u64, port: u16) -> Result<Vec<f64>, String> {
    let (bin, lib) = perftest_paths()?;
    let limit = "60";
    let run = |extra: &[String]| {
        let mut c = Command::new("timeout");
        c.arg(limit).arg(&bin).args(extra).env("LD_LIBRARY_PATH", &lib).stdin(Stdio::null());
        c
    };
    let mut server = run(&["-p".into(), port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let warmup = (iters / 10).max(10);
    let args: Vec<String> = [
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        test,
        "-s",
        &size.to_string(),
        "-n",
        &iters.to_string(),
        "-w",
        &warmup.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&args).output().map_err(|e| e.to_string());
    // A server whose client failed waits for another client: end it.
    let give_up = std::time::Instant::now() + Duration::from_secs(3);
    while matches!(server.try_wait(), Ok(None)) && std::time::Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Final:"))
        .ok_or_else(|| format!("{test} {size}: no result: {}", text.trim()))?;
    Ok(line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect())
}

/// Raw UCX at the sweep's sizes (`ucp_put_bw`, `ucp_get`: window of 32) and 8-byte tag latency.
pub fn perftest(o: &Opts) -> Vec<Row> {
    let mut rows = Vec::new();
    let base_port = 20000 + (std::process::id() % 20000) as u16;
    let mut port = base_port;
    let layouts = o.list("layouts", "raw,staging,paged");
    let sizes: Vec<u64> = if layouts.iter().any(|l| l == "raw") {
        o.list("sizes", "4k,16k,64k,256k,1m,4m,16m,64m").iter().filter_map(|s| parse_size(s)).collect()
    } else {
        Vec::new()
    };
    for op in o.list("ops", "write,read") {
        let (test, name) = if op == "read" { ("ucp_get", "READ") } else { ("ucp_put_bw", "WRITE") };
        for &size in &sizes {
            eprint!("\r[ucx_perftest] {test} {:<8}", human(size));
            port += 1;
            // About 1 GiB per run, at least 200 operations.
            let iters = ((1u64 << 30) / size).clamp(200, 100_000);
            let mut row = Row::default();
            row.set("system", "ucx_perftest").set("kind", "transfer").set("id", format!("raw-{}-{name}", human(size)));
            row.set("layout", "raw")
                .set("model", "-")
                .set("op", name)
                .set("desc_size", size)
                .set("descs", 1)
                .set("window", 32)
                .set("bytes", size);
            match perftest_once(test, size, iters, port) {
                // Final: iters, overhead p50/avg/overall (us), bandwidth avg/overall (MiB/s), msg rate avg/overall.
                Ok(f) if f.len() >= 6 => {
                    row.set("iters", f[0])
                        .set("gbps", format!("{:.3}", f[5] * 1048576.0 / 1e9))
                        .set("p50_us", format!("{:.1}", f[1]));
                }
                Ok(f) => {
                    row.set("error", format!("unparsed {f:?}"));
                }
                Err(e) => {
                    eprintln!("\n{e}");
                    row.set("error", e);
                }
            }
            rows.push(row);
        }
    }
    eprint!("\r[ucx_perftest] tag_lat 8B      ");
    let mut row = Row::default();
    row.set("system", "ucx_perftest").set("kind", "latency").set("id", "notify-8B");
    match perftest_once("tag_lat", 8, o.num("latency-iters", "20000") as u64 * 5, port + 1) {
        Ok(f) if f.len() >= 3 => {
            row.set("iters", f[0]).set("one_way_p50_us", f[1]).set("one_way_avg_us", f[2]);
        }
        Ok(f) => {
            row.set("error", format!("unparsed {f:?}"));
        }
        Err(e) => {
            row.set("error", e);
        }
    }
    rows.push(row);
    eprintln!();
    rows
}

const SYSTEMS: [&str; 9] = [
    "ucx_perftest",
    "kvxfer-ucx",
    "kvxfer-ucx-ab-on",
    "kvxfer-ucx-ab-off",
    "kvxfer-nixl",
    "kvxfer-nixl-ab-on",
    "kvxfer-nixl-ab-off",
    "nixl",
    "nixl-prep",
];

/// NIXL used directly, both ways; goals compare against the faster one per case.
const NIXL_DIRECT: [&str; 2] = ["nixl", "nixl-prep"];

fn find<'a>(rows: &'a [Row], system: &str, id: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.get("system") == Some(system) && r.get("id") == Some(id) && r.get("error").is_none())
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The raw case the goal compares with perftest's window of 32: the largest
/// count <= 32 that ran at this size.
pub fn window_case<'a>(rows: &'a [Row], system: &str, size: u64, op: &str) -> Option<&'a Row> {
    rows.iter()
        .filter(|r| {
            r.get("system") == Some(system)
                && r.get("layout") == Some("raw")
                && r.get("op") == Some(op)
                && r.num("desc_size") == Some(size as f64)
                && r.get("error").is_none()
        })
        .filter(|r| r.num("descs").is_some_and(|d| d <= 32.0))
        .max_by(|a, b| a.num("descs").unwrap().total_cmp(&b.num("descs").unwrap()))
}

struct Goal {
    name: &'static str,
    ratios: Vec<(String, f64)>,
    target: f64,
    at_least: bool,
}

impl Goal {
    fn verdict(&self) -> String {
        if self.ratios.is_empty() {
            return "NOT MEASURED".into();
        }
        let worst = if self.at_least {
            self.ratios.iter().map(|r| r.1).fold(f64::INFINITY, f64::min)
        } else {
            self.ratios.iter().map(|r| r.1).fold(0.0, f64::max)
        };
        let met = if self.at_least { worst >= self.target } else { worst <= self.target };
        let geo = (self.ratios.iter().map(|r| r.1.ln()).sum::<f64>() / self.ratios.len() as f64).exp();
        format!(
            "{} (worst {worst:.2}x, geomean {geo:.2}x, goal {}{:.2}x, {} cases)",
            if met { "MET" } else { "NOT MET" },
            if self.at_least { ">=" } else { "<=" },
            self.target,
            self.ratios.len()
        )
    }
}

fn goals(rows: &[Row]) -> Vec<Goal> {
    let mut g1 = Goal {
        name: "large descriptors (>=1 MiB) WRITE: kvxfer-ucx / ucx_perftest put_bw",
        ratios: vec![],
        target: 0.95,
        at_least: true,
    };
    for r in rows.iter().filter(|r| {
        r.get("system") == Some("ucx_perftest") && r.get("op") == Some("WRITE") && r.get("kind") == Some("transfer")
    }) {
        let size = r.num("desc_size").unwrap_or(0.0) as u64;
        if size < 1 << 20 {
            continue;
        }
        if let (Some(base), Some(k)) =
            (r.num("gbps"), window_case(rows, "kvxfer-ucx", size, "WRITE").and_then(|k| k.num("gbps")))
        {
            g1.ratios.push((human(size), k / base));
        }
    }
    let mut g2 = Goal {
        name: "paged 4-32 KiB descriptors: kvxfer-ucx / best direct NIXL",
        ratios: vec![],
        target: 2.0,
        at_least: true,
    };
    let mut g4 =
        Goal { name: "kvxfer-nixl / best direct NIXL (same cases)", ratios: vec![], target: 0.9, at_least: true };
    let mut ids: Vec<&str> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.get("kind") == Some("transfer") && NIXL_DIRECT.contains(&r.get("system").unwrap_or_default()))
    {
        let id = r.get("id").unwrap_or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    for id in ids {
        let Some(best) = NIXL_DIRECT
            .iter()
            .filter_map(|s| find(rows, s, id))
            .max_by(|a, b| a.num("gbps").unwrap_or(0.0).total_cmp(&b.num("gbps").unwrap_or(0.0)))
        else {
            continue;
        };
        let base = best.num("gbps").unwrap_or(f64::NAN);
        let size = best.num("desc_size").unwrap_or(0.0);
        let label = format!("{id} (vs {})", best.get("system").unwrap_or_default());
        if best.get("layout") == Some("paged") && (4096.0..=32768.0).contains(&size) {
            if let Some(k) = find(rows, "kvxfer-ucx", id).and_then(|k| k.num("gbps")) {
                g2.ratios.push((label.clone(), k / base));
            }
        }
        if let Some(k) = find(rows, "kvxfer-nixl", id).and_then(|k| k.num("gbps")) {
            g4.ratios.push((label, k / base));
        }
    }
    let mut g3 = Goal {
        name: "8-byte notification one-way p50: kvxfer-ucx / ucx_perftest tag_lat",
        ratios: vec![],
        target: 1.2,
        at_least: false,
    };
    if let (Some(k), Some(b)) = (
        find(rows, "kvxfer-ucx", "notify-8B").and_then(|r| r.num("one_way_p50_us")),
        find(rows, "ucx_perftest", "notify-8B").and_then(|r| r.num("one_way_p50_us")),
    ) {
        g3.ratios.push(("notify-8B".into(), k / b));
    }
    vec![g1, g2, g3, g4]
}

/// Per (system, id): the round with the median value of `key` (bandwidth,
/// latency or registration time), so one noisy round does not decide.
pub fn medians(rows: &[Row]) -> Vec<Row> {
    let mut groups: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in rows {
        let key = (r.get("system").unwrap_or_default().to_string(), r.get("id").unwrap_or_default().to_string());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    order
        .into_iter()
        .map(|key| {
            let group = &groups[&key];
            let mut ok: Vec<&Row> = group.iter().copied().filter(|r| r.get("error").is_none()).collect();
            if ok.is_empty() {
                return group[0].clone();
            }
            let metric = ["gbps", "one_way_p50_us", "register_ms"]
                .into_iter()
                .find(|m| ok[0].num(m).is_some())
                .unwrap_or("gbps");
            ok.sort_by(|a, b| a.num(metric).unwrap_or(0.0).total_cmp(&b.num(metric).unwrap_or(0.0)));
            let mut median = ok[ok.len() / 2].clone();
            median.set("rounds", ok.len());
            median
        })
        .collect()
}

pub fn print(o: &Opts, rows: &[Row]) {
    let rows = &medians(rows)[..];
    let present: Vec<&str> =
        SYSTEMS.iter().copied().filter(|s| rows.iter().any(|r| r.get("system") == Some(s))).collect();
    println!("\nkvxfer-bench, UCX_TLS={}, pool {} per side", o.get("tls", "sm,self"), o.get("pool", "256m"));
    println!("\nTransfers: GB/s (p50 request latency us) per system; raw ucx_perftest keeps 32 operations in flight");
    let mut header = format!("{:<52} {:>6} {:>9}", "case", "descs", "bytes");
    for s in &present {
        header += &format!(" {:>20}", s);
    }
    println!("{header}");
    let mut ids: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.get("kind") == Some("transfer")) {
        let id = r.get("id").unwrap_or_default();
        if r.get("system") != Some("ucx_perftest") && !ids.contains(&id) {
            ids.push(id);
        }
    }
    for id in &ids {
        let any = rows.iter().find(|r| r.get("id") == Some(id)).unwrap();
        let size = any.num("desc_size").unwrap_or(0.0) as u64;
        let op = any.get("op").unwrap_or_default();
        let mut line = format!(
            "{:<52} {:>6} {:>9}",
            id,
            any.get("descs").unwrap_or("-"),
            human(any.num("bytes").unwrap_or(0.0) as u64)
        );
        for s in &present {
            let r = if *s == "ucx_perftest" {
                if any.get("layout") == Some("raw") {
                    find(rows, s, &format!("raw-{}-{op}", human(size)))
                } else {
                    None
                }
            } else {
                find(rows, s, id)
            };
            line += &format!(
                " {:>20}",
                r.map_or("-".into(), |r| format!("{} ({})", cell(r.num("gbps"), 2), cell(r.num("p50_us"), 0)))
            );
        }
        println!("{line}");
    }
    println!("\nPost vs completion (p50 us) and CPU seconds (initiator / target) per case:");
    for id in &ids {
        let mut line = format!("{:<52}", id);
        for s in present.iter().filter(|s| **s != "ucx_perftest") {
            if let Some(r) = find(rows, s, id) {
                line += &format!(
                    "  {s}: post {} done {} cpu {}/{}",
                    cell(r.num("post_p50_us"), 0),
                    cell(r.num("p50_us"), 0),
                    cell(r.num("cpu_s"), 2),
                    cell(r.num("target_cpu_s"), 2)
                );
            }
        }
        println!("{line}");
    }
    println!("\nNotification latency, 8 bytes one way (p50 / avg us):");
    for s in &present {
        if let Some(r) = find(rows, s, "notify-8B") {
            println!("  {s:<14} {} / {}", cell(r.num("one_way_p50_us"), 3), cell(r.num("one_way_avg_us"), 3));
        }
    }
    println!("\nRegistration (register / deregister ms, descriptor bytes):");
    for r in rows.iter().filter(|r| r.get("kind") == Some("register")) {
        println!(
            "  {:<14} {:<22} {:>10} / {:>10} ms  {:>9} B",
            r.get("system").unwrap_or_default(),
            r.get("id").unwrap_or_default(),
            r.get("register_ms").unwrap_or("-"),
            r.get("deregister_ms").unwrap_or("-"),
            r.get("desc_bytes").unwrap_or("-")
        );
    }
    for (n, id) in rows
        .iter()
        .filter(|r| r.get("kind") == Some("register") && r.get("system") == Some("nixl"))
        .map(|r| (r.get("regions"), r.get("id").unwrap_or_default()))
    {
        // Registration is the same call in both NIXL modes: "nixl" is the reference.
        if let (Some(k), Some(b)) = (
            find(rows, "kvxfer-ucx", id).and_then(|r| r.num("register_ms")),
            find(rows, "nixl", id).and_then(|r| r.num("register_ms")),
        ) {
            println!("  ratio kvxfer-ucx / nixl register time, {} regions: {:.2}x", n.unwrap_or("?"), k / b);
        }
    }
    print_counting_cost(rows);
    println!("\nRatios (kvxfer / reference, measured in this run):");
    for g in goals(rows) {
        for (what, ratio) in &g.ratios {
            println!("  {:<70} {:<60} {ratio:.2}x", g.name, what);
        }
        println!("GOAL {}: {}", g.name, g.verdict());
    }
}

/// Counting on against off (requests alternating in one process), per case and
/// as a geometric mean over cases: throughput ratio (1.00 = no loss) and p50 latency ratio.
fn print_counting_cost(rows: &[Row]) {
    for backend in ["kvxfer-ucx", "kvxfer-nixl"] {
        let (on_name, off) = (format!("{backend}-ab-on"), format!("{backend}-ab-off"));
        let mut pairs: Vec<(String, f64, f64)> = Vec::new();
        for on in rows.iter().filter(|r| r.get("system") == Some(&on_name) && r.get("kind") == Some("transfer")) {
            let id = on.get("id").unwrap_or_default();
            let Some(off) = find(rows, &off, id) else { continue };
            if let (Some(g1), Some(g0), Some(l1), Some(l0)) =
                (on.num("gbps"), off.num("gbps"), on.num("p50_us"), off.num("p50_us"))
            {
                if g0 > 0.0 && l0 > 0.0 {
                    pairs.push((id.to_owned(), g1 / g0, l1 / l0));
                }
            }
        }
        if pairs.is_empty() {
            continue;
        }
        println!("\nCost of counting, {backend} with counters / without (alternating requests): GB/s, p50 latency");
        if let Some(ns) = find(rows, &on_name, "counting-ns").and_then(|r| r.num("ns")) {
            println!("  counting one transfer alone (record, peer and agent counters, histogram): {ns:.0} ns of CPU");
        }
        for (id, g, l) in &pairs {
            println!("  {id:<52} {g:.3}x  {l:.3}x");
        }
        let geo = |f: &dyn Fn(&(String, f64, f64)) -> f64| {
            (pairs.iter().map(|p| f(p).ln()).sum::<f64>() / pairs.len() as f64).exp()
        };
        println!(
            "  geometric mean over {} cases: throughput {:.3}x, p50 latency {:.3}x",
            pairs.len(),
            geo(&|p| p.1),
            geo(&|p| p.2)
        );
        // The median over cases resists the outliers a busy machine produces.
        let median = |f: &dyn Fn(&(String, f64, f64)) -> f64| {
            let mut v: Vec<f64> = pairs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("  median over cases: throughput {:.3}x, p50 latency {:.3}x", median(&|p| p.1), median(&|p| p.2));
    }
}

pub fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let fields: Vec<String> =
                r.0.iter()
                    .map(|(k, v)| {
                        let val = if v.parse::<f64>().is_ok_and(|x| x.is_finite()) {
                            v.clone()
                        } else {
                            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                        };
                        format!("\"{k}\": {val}")
                    })
                    .collect();
            format!("  {{{}}}", fields.join(", "))
        })
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}

pub fn csv(rows: &[Row]) -> String {
    let mut columns: Vec<String> = Vec::new();
    for r in rows {
        for (k, _) in &r.0 {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let mut out = columns.join(",") + "\n";
    for r in rows {
        let by: BTreeMap<&str, &str> = r.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        out += &columns
            .iter()
            .map(|c| by.get(c.as_str()).copied().unwrap_or("").replace(',', ";"))
            .collect::<Vec<_>>()
            .join(",");
        out += "\n";
    }
    out
}
