//! A kvxfer NIXL agent and an agent made directly with NIXL's C API load each
//! other's metadata and move data both ways: kvxfer's descriptor is real NIXL
//! metadata, so kvxfer talks to stock NIXL peers. With
//! `KVX_NIXL_STOCK_PEERS=1` they also load each other by connection info,
//! through NIXL's listener.

mod common;
use common::*;
use kvxfer::backend::nixl::handle::{NixlHandle, NixlOptions};
use kvxfer::backend::nixl::sys::*;
use kvxfer::core::memory::{kvx_memory_desc, kvx_memory_type::KVX_MEMORY_DRAM};
use std::time::{Duration, Instant};

fn wait_stock(stock: &NixlHandle, req: nixl_capi_xfer_req_t) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // SAFETY: `req` was posted on `stock` and is released only below.
        match unsafe { stock.transfer_status(req) } {
            NIXL_CAPI_SUCCESS => break,
            NIXL_CAPI_IN_PROG if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(50)),
            s => panic!("stock NIXL transfer ended with {s} ({})", status_name(s)),
        }
    }
    // SAFETY: the request's last use.
    unsafe { stock.release(req) };
}

#[test]
fn kvxfer_and_stock_nixl_agents_interoperate() {
    std::env::set_var("TRTLLM_USE_NIXL_KVCACHE", "1");
    std::env::set_var("KVX_NIXL_STOCK_PEERS", "1");
    let ours = Agent::new("kvxfer-side");

    // The stock side: NIXL's C API with its defaults and its listener, no kvxfer agent logic.
    let stock_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stock = NixlHandle::create("stock-nixl", &NixlOptions::resolve(Some(true), 1, &[], Some(stock_port))).unwrap();
    let stock_buf = pattern(1 << 20, 3);
    let stock_desc = [kvx_memory_desc { addr: stock_buf.as_ptr() as u64, len: stock_buf.len() as u64, device_id: 0 }];
    stock.register(KVX_MEMORY_DRAM, &stock_desc, true).unwrap();

    let mine = pattern(1 << 20, 4);
    let back = vec![0u8; 1 << 20];
    let ld = ours.register(&[&mine]);
    let lb = ours.register(&[&back]);

    // Each loads the other's metadata exactly as it hands it out.
    ok(ours.load("stock-nixl", &stock.local_metadata().unwrap()));
    assert_eq!(stock.load_metadata(&ours.desc()).unwrap(), "kvxfer-side");
    assert!(ours.check("stock-nixl", &stock_desc));

    // kvxfer reads the stock agent's memory, then overwrites it with a sync message.
    ours.submit(READ, &lb, &stock_desc, "stock-nixl", None).unwrap().expect_success();
    assert!(back == stock_buf);
    ours.submit(WRITE, &ld, &stock_desc, "stock-nixl", Some(b"from kvxfer")).unwrap().expect_success();
    assert!(stock_buf == mine);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.is_empty() && Instant::now() < deadline {
        stock.poll_notifications(|sender, m| got.push((sender.to_owned(), m.to_vec()))).unwrap();
    }
    assert_eq!(got, vec![("kvxfer-side".to_string(), b"from kvxfer".to_vec())]);

    // The stock agent writes into kvxfer's memory and notifies: kvxfer sees it keyed by sender.
    let fresh = pattern(1 << 20, 5);
    let fresh_desc = [kvx_memory_desc { addr: fresh.as_ptr() as u64, len: fresh.len() as u64, device_id: 0 }];
    stock.register(KVX_MEMORY_DRAM, &fresh_desc, true).unwrap();
    let (req, _) = stock
        .post(
            NIXL_CAPI_XFER_OP_WRITE,
            (KVX_MEMORY_DRAM, &fresh_desc),
            (KVX_MEMORY_DRAM, &lb),
            "kvxfer-side",
            Some(b"from stock"),
        )
        .unwrap();
    wait_stock(&stock, req);
    assert_eq!(ours.wait_notifications(1, 20_000), vec![("stock-nixl".to_string(), b"from stock".to_vec())]);
    assert!(back == fresh);

    // Both forget each other, then load each other again by connection info.
    ok(ours.invalidate("stock-nixl"));
    stock.invalidate("kvxfer-side").unwrap();
    ok(ours.load_by_info("stock-nixl", &format!("127.0.0.1:{stock_port}")));
    assert!(ours.check("stock-nixl", &stock_desc));
    let info = ours.conn_info();
    let ours_port: u16 = info.rsplit(':').next().unwrap().parse().unwrap();
    stock.fetch_metadata("kvxfer-side", "127.0.0.1", ours_port).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stock.check_remote("kvxfer-side", KVX_MEMORY_DRAM, &lb).unwrap() {
        assert!(Instant::now() < deadline, "the stock agent could not fetch kvxfer's metadata from {info}");
        std::thread::sleep(Duration::from_millis(1));
    }
    ours.submit(READ, &lb, &stock_desc, "stock-nixl", None).unwrap().expect_success();
    assert!(back == mine);
}
