//! The layer unpacker on hostile tar streams (plain, gzip or zstd, told apart by magic as a
//! pull does). Each input is unpacked into a fresh root next to a canary directory; the
//! process's working directory is their parent, so a relative escape, `..`, a symlink or
//! hardlink out of the root, or `/proc/self/cwd/...` would all land where we look. After
//! every input: no panic, the canary and its file untouched (content, link count, mode,
//! owner), nothing new beside the root, the root still a directory, and no leaked fd.
#![no_main]

use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vessel_image::layer::decompress_with;
use vessel_image::unpack::{unpack, UnpackOptions};

const SECRET: &[u8] = b"canary: must never change\n";
/// Bounds the harness, not the unpacker: a small input can inflate to gigabytes, and
/// skipping that much tar data would only make libFuzzer time out.
const MAX_DECODED: u64 = 64 << 20;

struct Env {
    base: PathBuf,
    canary_ino: u64,
    canary_meta: (u32, u32, u32),
    base_meta: (u32, u32, u32),
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).expect("stat");
    (m.mode(), m.uid(), m.gid())
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("vessel-fuzz-unpack.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("canary")).expect("create canary dir");
        std::fs::write(base.join("canary/secret"), SECRET).expect("write canary");
        std::env::set_current_dir(&base).expect("chdir to the fuzz dir");
        let canary_ino = std::fs::metadata(base.join("canary/secret"))
            .expect("stat canary")
            .ino();
        let canary_meta = meta(&base.join("canary/secret"));
        let base_meta = meta(&base);
        Env {
            base,
            canary_ino,
            canary_meta,
            base_meta,
        }
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .count()
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let root = env.base.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root).expect("remove the previous root");
    }
    std::fs::create_dir(&root).expect("create root");
    let fds = open_fds();
    let opts = UnpackOptions {
        max_bytes: 16 << 20,
        ..UnpackOptions::default()
    };
    // Both gzip readers: the CRC-checking one (import) and the one that leaves the check to
    // the diff id (pull), chosen by a bit of the input so both get explored.
    let check_crc = data.len() % 2 == 0;
    if let Ok((_, decoded)) = decompress_with(BufReader::new(data), check_crc) {
        let _ = unpack(decoded.take(MAX_DECODED), &root, &opts);
    }

    assert_eq!(open_fds(), fds, "the unpacker leaked a file descriptor");
    assert_eq!(
        names(&env.base),
        ["canary", "root"],
        "something was created beside the root"
    );
    assert_eq!(
        names(&env.base.join("canary")),
        ["secret"],
        "canary dir changed"
    );
    let secret = env.base.join("canary/secret");
    let m = std::fs::symlink_metadata(&secret).expect("stat canary");
    assert!(m.is_file(), "canary replaced");
    assert_eq!(m.ino(), env.canary_ino, "canary replaced");
    assert_eq!(m.nlink(), 1, "canary hardlinked from the layer");
    assert_eq!(
        meta(&secret),
        env.canary_meta,
        "canary mode or owner changed"
    );
    assert_eq!(std::fs::read(&secret).expect("read canary"), SECRET);
    assert_eq!(meta(&env.base), env.base_meta, "fuzz dir metadata changed");
    assert!(
        std::fs::symlink_metadata(&root)
            .expect("stat root")
            .is_dir(),
        "root is no longer a directory"
    );
    assert_eq!(
        std::env::current_dir().expect("cwd"),
        env.base,
        "working directory changed"
    );
});
