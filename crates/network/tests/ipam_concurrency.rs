//! Twenty allocators at once — threads, and separate processes — never get the same
//! address: each allocation is one IMMEDIATE transaction on the shared SQLite file.

use std::collections::HashSet;
use std::process::Command;

use vessel_network::{validate_network, IpamConfig, Network, NetworkCreate, Store, ValidateEnv};

const N: usize = 20;

fn network() -> Network {
    let req = NetworkCreate {
        name: "conc".into(),
        // A /27: 29 usable addresses after the gateway, so 20 fit but not by much.
        ipam: vec![IpamConfig {
            subnet: "10.231.9.0/27".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    validate_network(
        &req,
        &ValidateEnv {
            existing: &[],
            host_routes: &[],
            link_prefix: "vt-",
        },
    )
    .unwrap()
}

fn check(addrs: Vec<String>, net: &Network, store: &Store) {
    assert_eq!(addrs.len(), N);
    let set: HashSet<&String> = addrs.iter().collect();
    assert_eq!(set.len(), N, "duplicates: {addrs:?}");
    assert!(
        !set.contains(&"10.231.9.1".to_string()),
        "gateway handed out"
    );
    let leases = store.leases(&net.id).unwrap();
    assert_eq!(leases.len(), N + 1, "20 leases + the gateway");
}

#[test]
fn twenty_threads_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    Store::open(dir.path())
        .unwrap()
        .reserve_gateways(&net)
        .unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let (dir, net, barrier) = (dir.path().to_path_buf(), net.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut st = Store::open(&dir).unwrap();
                barrier.wait();
                st.allocate(&net, &net.subnets[0], &format!("t{i}"), None)
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    let addrs = handles.into_iter().map(|h| h.join().unwrap()).collect();
    check(addrs, &net, &Store::open(dir.path()).unwrap());
}

/// The child half of the process test: does nothing unless the parent set the env.
#[test]
fn child_allocate() {
    let (Ok(dir), Ok(net), Ok(owner)) = (
        std::env::var("VT_IPAM_DIR"),
        std::env::var("VT_IPAM_NET"),
        std::env::var("VT_IPAM_OWNER"),
    ) else {
        return;
    };
    let net: Network = serde_json::from_str(&net).unwrap();
    let mut st = Store::open(std::path::Path::new(&dir)).unwrap();
    let ip = st.allocate(&net, &net.subnets[0], &owner, None).unwrap();
    println!("ADDR={ip}");
}

#[test]
fn twenty_processes_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    Store::open(dir.path())
        .unwrap()
        .reserve_gateways(&net)
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let json = serde_json::to_string(&net).unwrap();
    let children: Vec<_> = (0..N)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_allocate",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("VT_IPAM_DIR", dir.path())
                .env("VT_IPAM_NET", &json)
                .env("VT_IPAM_OWNER", format!("p{i}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let addrs = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split_whitespace()
                .find_map(|w| w.strip_prefix("ADDR="))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("no address in {text}"))
        })
        .collect();
    check(addrs, &net, &Store::open(dir.path()).unwrap());
}
