//! Fixture for root tests against the real kernel: a per-test Context (own state dir,
//! runroot, nft table and device prefix) and a Drop guard that removes everything with the
//! test's names even when the test panics.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vessel_network::{
    netns, validate_network, Context, Host, IpamConfig, Network, NetworkCreate, ValidateEnv,
};

pub fn skip_unless_root() -> bool {
    if !vessel_testkit::is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

/// `vt-` + 3 base36 characters from the pid: short enough for IFNAMSIZ, distinct between
/// the test processes that run at the same time.
fn link_prefix() -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = std::process::id() as usize % (36 * 36 * 36);
    let mut s = String::new();
    for _ in 0..3 {
        s.insert(0, D[n % 36] as char);
        n /= 36;
    }
    format!("vt-{s}")
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ctx: Context,
    pub netns: Vec<PathBuf>,
    pub children: Vec<Child>,
}

impl Fixture {
    pub fn new(tag: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context::new(dir.path().join("state"), dir.path().join("run"))
            .with_names(&vessel_testkit::unique(tag), &link_prefix());
        Fixture {
            dir,
            ctx,
            netns: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn host(&self) -> Host {
        Host::new(self.ctx.clone()).expect("host")
    }

    /// A validated network on `subnet` (each test uses its own 10.231.N.0/24).
    pub fn network(&self, name: &str, subnets: &[&str], internal: bool) -> Network {
        let req = NetworkCreate {
            name: name.into(),
            ipam: subnets
                .iter()
                .map(|s| IpamConfig {
                    subnet: s.to_string(),
                    ..Default::default()
                })
                .collect(),
            internal,
            ..Default::default()
        };
        validate_network(
            &req,
            &ValidateEnv {
                existing: &[],
                host_routes: &[],
                link_prefix: &self.ctx.link_prefix,
            },
        )
        .expect("valid network")
    }

    /// A fresh netns "container" pinned under the runroot.
    pub fn container(&mut self, name: &str) -> (PathBuf, OwnedFd) {
        let full = format!("{}-{name}", self.ctx.table);
        let p = netns::create_netns(&self.ctx.runroot, &full).expect("create netns");
        self.netns.push(p.clone());
        let fd = netns::open_netns(&p).expect("open netns");
        (p, fd)
    }

    /// Start `busybox httpd` serving `body` on port 80 inside the netns.
    pub fn httpd(&mut self, ns: &Path, body: &str) {
        let www = self.dir.path().join(format!("www-{}", self.children.len()));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), body).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(&www)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn httpd");
        self.children.push(child);
        // Wait until it listens (loopback inside the netns).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if in_ns(
                ns,
                &[
                    "timeout",
                    "3",
                    "busybox",
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    "http://127.0.0.1:80/",
                ],
            )
            .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("httpd did not come up in {}", ns.display());
    }
}

/// Run a command inside a netns; Ok(stdout) on success, Err(stderr) otherwise.
pub fn in_ns(ns: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Fetch a URL from the host's namespace.
pub fn wget(url: &str) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["3", "busybox", "wget", "-q", "-O", "-", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

pub fn nft_table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Only what this fixture started, by pid.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for l in links_with_prefix(&self.ctx.link_prefix) {
            let _ = Command::new("ip").args(["link", "del", &l]).status();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.ctx.table])
            .stderr(Stdio::null())
            .status();
        for p in &self.netns {
            let _ = netns::remove_netns(p);
        }
    }
}
