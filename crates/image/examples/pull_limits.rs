//! The machine's single-thread limits for a pull, with the very libraries vessel uses:
//! SHA-256 (sha2) of the compressed layers, zlib-rs inflate of them, and SHA-256 of the
//! inflated tar streams. `bench/pull/run.sh` prints these beside the pull times, so the
//! floor a 2-core pull cannot beat is measured, not guessed.
//!
//!   cargo run --release -p vessel-image --example pull_limits -- LAYER.tar.gz…
//!
//! Prints one `name seconds` line per stage.

use std::io::Read;
use std::time::Instant;

use sha2::{Digest as _, Sha256};

fn main() -> std::io::Result<()> {
    let layers: Vec<Vec<u8>> = std::env::args()
        .skip(1)
        .map(std::fs::read)
        .collect::<std::io::Result<_>>()?;
    let t = Instant::now();
    for l in &layers {
        std::hint::black_box(Sha256::digest(l));
    }
    println!("sha256_compressed {:.3}", t.elapsed().as_secs_f64());

    // Inflate into a reused buffer, hashing nothing: the decompressor alone.
    let mut buf = vec![0u8; 1 << 20];
    let mut inflated = 0u64;
    let t = Instant::now();
    for l in &layers {
        let mut d = flate2::bufread::MultiGzDecoder::new(&l[..]);
        loop {
            let n = d.read(&mut buf)?;
            if n == 0 {
                break;
            }
            inflated += n as u64;
            std::hint::black_box(&buf[..n]);
        }
    }
    println!("inflate {:.3}", t.elapsed().as_secs_f64());

    // SHA-256 over as many bytes as the tar streams hold (the diff ids).
    let mut h = Sha256::new();
    let t = Instant::now();
    let mut left = inflated;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    std::hint::black_box(h.finalize());
    println!("sha256_inflated {:.3}", t.elapsed().as_secs_f64());
    println!("inflated_bytes {inflated}");
    Ok(())
}
