//! Compile vs cache-hit time for Docker's default profile. Prints figures; asserts nothing.
//!
//! cargo run --release -p vessel-seccomp --example bench

use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxSeccomp;
use vessel_seccomp::{compile, Cache};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec: LinuxSeccomp =
        serde_json::from_str(include_str!("../tests/data/docker-default.json"))?;
    let rounds = 50;
    let mut compiles = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        compile(&spec)?;
        compiles.push(t.elapsed());
    }
    let dir = tempfile::tempdir()?;
    let cache = Cache::new(dir.path());
    let program = cache.get_or_compile(&spec)?;
    let mut hits = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        cache.get_or_compile(&spec)?;
        hits.push(t.elapsed());
    }
    let (c, h) = (median(compiles), median(hits));
    println!(
        "docker default profile: {} BPF instructions",
        program.instructions().len()
    );
    println!("compile (libseccomp + export): median {c:?} over {rounds}");
    println!("cache hit (key + read + verify): median {h:?} over {rounds}");
    println!("ratio: {:.1}x", c.as_secs_f64() / h.as_secs_f64().max(1e-9));
    Ok(())
}
