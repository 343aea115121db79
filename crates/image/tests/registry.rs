//! Pulls against real registries on 127.0.0.1: the Debian docker-registry (plain HTTP, TLS
//! with a self-signed cert, htpasswd Basic auth) fed by skopeo, and a scripted fake for token
//! auth and for registries that lie.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::fake::{Content, Fake, Req, Resp};
use common::oci::{busybox_rootfs, write_layout};
use common::registry::{Registry, RegistryConfig};
use common::{tree, RawTar};
use vessel_image::registry::auth::{self, Credentials};
use vessel_image::registry::pull::{self, NoProgress, PullOptions, PullResult};
use vessel_image::registry::TlsVerify;
use vessel_image::store::Store;
use vessel_image::{Error, Reference};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn do_pull(store: &Arc<Store>, reference: &str, opts: &PullOptions) -> Result<PullResult, Error> {
    let r = Reference::parse(reference)?;
    rt().block_on(pull::pull(store.clone(), &r, opts, Arc::new(NoProgress)))
}

fn opts_with_authfile(dir: &Path) -> PullOptions {
    let mut o = PullOptions::default();
    o.registry.auth_file = Some(dir.join("auth.json"));
    o.registry.max_attempts = 3;
    o
}

fn two_layers() -> Vec<Vec<u8>> {
    let base = busybox_rootfs();
    let mut top = RawTar::new();
    top.dir("etc/")
        .file("etc/.wh.gone", b"")
        .file("etc/motd", b"hello from layer 2\n");
    vec![base, top.finish()]
}

fn skopeo_push(layout: &Path, dest: &str, extra: &[&str]) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo installed");
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_store_has_no_partials(root: &Path) {
    assert!(tree(&root.join("blobs/tmp")).is_empty(), "temp blobs left");
    let snaps: Vec<String> = tree(&root.join("snapshots"))
        .into_iter()
        .filter(|p| p.starts_with(".tmp") || p.starts_with(".trash"))
        .collect();
    assert!(snaps.is_empty(), "temp snapshots left: {snaps:?}");
}

fn check_pulled(store: &Store, reference: &str) {
    let layers = store.layer_paths(reference).unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(layers[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read(layers[1].join("etc/motd")).unwrap(),
        b"hello from layer 2\n"
    );
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(layers[1].join("etc/gone"))
            .unwrap()
            .file_type()
            .is_char_device());
    }
}

/// vessel-runtime, built beside this test binary by a workspace build.
fn vessel_runtime() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let rt = dir.join("vessel-runtime");
    assert!(
        rt.is_file(),
        "{} missing: build the workspace (cargo build --workspace)",
        rt.display()
    );
    rt
}

/// Run `args` in a container whose rootfs is an overlay of `layers` (lowest first), with
/// vessel-runtime's default config; returns its stdout. Unmounts and deletes on the way out.
fn run_with_vessel_runtime(layers: &[std::path::PathBuf], args: &[&str]) -> String {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let work = tempfile::Builder::new()
        .prefix("vesseltest-")
        .tempdir()
        .unwrap();
    let bundle = work.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in [
        &rootfs,
        &work.path().join("upper"),
        &work.path().join("work"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        work.path().join("upper").display(),
        work.path().join("work").display()
    );
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&rootfs)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount the image's overlay");
    let _unmount = Unmount(rootfs.clone());
    let rt = vessel_runtime();
    assert!(Command::new(&rt)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .unwrap()
        .success());
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["linux"]["cgroupsPath"] =
        serde_json::json!(format!("/vesseltest-{}-image-run", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    // Output through a file: the container's init inherits the runtime's stdio.
    let out_path = work.path().join("out");
    let o = Command::new(&rt)
        .arg("--root")
        .arg(work.path().join("state"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(format!("vesseltest-{}-image-run", std::process::id()))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(work.path().join("err")).unwrap())
        .status()
        .unwrap();
    let err = std::fs::read_to_string(work.path().join("err")).unwrap_or_default();
    assert!(o.success(), "vessel-runtime run: {err}");
    std::fs::read_to_string(&out_path).unwrap()
}

#[test]
fn pulls_an_image_pushed_by_skopeo() {
    if !Registry::available() {
        eprintln!("skipping: {} not installed", common::registry::BINARY);
        return;
    }
    let reg = Registry::start(RegistryConfig::default());
    let work = tempfile::tempdir().unwrap();
    let built = write_layout(&work.path().join("oci"), "latest", &two_layers(), &["sh"]);
    skopeo_push(
        &work.path().join("oci"),
        &format!("{}/vesseltest/bb:v1", reg.host()),
        &[],
    );

    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let name = format!("{}/vesseltest/bb:v1", reg.host());
    let res = do_pull(&store, &name, &opts_with_authfile(work.path())).unwrap();
    assert!(res.fresh);
    assert_eq!(
        res.digest.as_str(),
        built.manifest_digest,
        "skopeo kept the manifest byte for byte"
    );
    assert_eq!(res.id.as_str(), built.config_digest);
    check_pulled(&store, &name);
    let inspect = store.inspect(&name).unwrap();
    assert_eq!(
        inspect["RepoDigests"][0],
        format!("{}/vesseltest/bb@{}", reg.host(), built.manifest_digest)
    );
    assert_eq!(inspect["Config"]["Cmd"][0], "sh");
    if rustix::process::geteuid().is_root() {
        // And it runs: its snapshots as overlay lower layers, under vessel-runtime.
        let out = run_with_vessel_runtime(
            &store.layer_paths(&name).unwrap(),
            &["sh", "-c", "cat /etc/motd; ls /etc"],
        );
        assert!(out.starts_with("hello from layer 2\n"), "{out}");
        assert!(
            !out.contains("gone"),
            "a whiteout showed up as a file: {out}"
        );
    }

    // Warm pull: nothing downloaded.
    let before = tree(root.path());
    let res2 = do_pull(&store, &name, &opts_with_authfile(work.path())).unwrap();
    assert!(!res2.fresh);
    assert_eq!(tree(root.path()), before);

    // By digest too, and rmi of every name empties the store.
    do_pull(
        &store,
        &format!("{}/vesseltest/bb@{}", reg.host(), built.manifest_digest),
        &opts_with_authfile(work.path()),
    )
    .unwrap();
    store
        .remove(&name, vessel_image::store::RemoveOptions::default())
        .unwrap();
    assert!(
        store.images().unwrap().is_empty(),
        "last tag removed the image"
    );
    assert!(tree(&root.path().join("blobs/sha256")).is_empty());
    assert!(tree(&root.path().join("snapshots")).is_empty());
}

#[test]
fn pulls_over_tls_with_a_self_signed_cert() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig {
        tls: true,
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    write_layout(&work.path().join("oci"), "latest", &two_layers(), &["sh"]);
    let name = format!("{}/vesseltest/tls:latest", reg.host());
    skopeo_push(&work.path().join("oci"), &name, &[]);
    // Each pull into a fresh store, so layers travel over TLS too.
    let pull_fresh = |o: &PullOptions| {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path()).unwrap());
        do_pull(&store, &name, o).map(|_| check_pulled(&store, &name))
    };
    let empty = tempfile::tempdir().unwrap();
    let mut o = opts_with_authfile(work.path());
    o.registry.certs_d = Some(vec![empty.path().to_path_buf()]);

    o.registry.tls_verify = TlsVerify::Never;
    pull_fresh(&o).unwrap();

    // Verified (loopback is exempt only by default), with nothing trusting the cert.
    o.registry.tls_verify = TlsVerify::Always;
    let e = pull_fresh(&o).unwrap_err();
    assert!(matches!(e, Error::UntrustedCertificate { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("certificate") && msg.contains(&reg.host()),
        "{msg}"
    );

    // --cert-dir with the cert as a CA.
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), reg.cert_pem()).unwrap();
    o.registry.cert_dir = Some(certs.path().to_path_buf());
    pull_fresh(&o).unwrap();

    // docker's certs.d/<host:port>/ca.crt.
    o.registry.cert_dir = None;
    let base = tempfile::tempdir().unwrap();
    std::fs::create_dir(base.path().join(reg.host())).unwrap();
    std::fs::write(base.path().join(reg.host()).join("ca.crt"), reg.cert_pem()).unwrap();
    o.registry.certs_d = Some(vec![empty.path().to_path_buf(), base.path().to_path_buf()]);
    pull_fresh(&o).unwrap();
}

#[test]
fn client_certificates_come_from_the_cert_dir() {
    if !Registry::available() {
        return;
    }
    let client = rcgen::generate_simple_self_signed(vec!["vesseltest-client".into()]).unwrap();
    let reg = Registry::start(RegistryConfig {
        tls: true,
        client_ca: Some(client.cert.pem()),
        ..Default::default()
    });
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), reg.cert_pem()).unwrap();
    let mut opts = vessel_image::registry::RegistryOptions {
        tls_verify: TlsVerify::Always,
        cert_dir: Some(certs.path().to_path_buf()),
        ..Default::default()
    };
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let name = format!("{}/vesseltest/mtls:v1", reg.host());
    let imp = vessel_image::store::ImportOptions {
        reference: Some(Reference::parse(&name).unwrap()),
        ..Default::default()
    };
    store.import(&busybox_rootfs()[..], &imp).unwrap();
    let push = |o: &vessel_image::registry::RegistryOptions| {
        rt().block_on(vessel_image::registry::push::push(
            store.clone(),
            &name,
            &Reference::parse(&name).unwrap(),
            o,
            Arc::new(vessel_image::registry::push::NoPushProgress),
        ))
    };
    // The registry hangs up on a client without a certificate.
    opts.max_attempts = 1;
    let e = push(&opts).unwrap_err();
    assert!(matches!(e, Error::Http { .. }), "{e}");

    std::fs::write(certs.path().join("client.cert"), client.cert.pem()).unwrap();
    std::fs::write(
        certs.path().join("client.key"),
        client.key_pair.serialize_pem(),
    )
    .unwrap();
    let digest = push(&opts).unwrap();
    let root2 = tempfile::tempdir().unwrap();
    let store2 = Arc::new(Store::open(root2.path()).unwrap());
    let po = PullOptions {
        registry: opts.clone(),
        ..Default::default()
    };
    assert_eq!(do_pull(&store2, &name, &po).unwrap().digest, digest);
    assert!(store2.layer_paths(&name).unwrap()[0]
        .join("bin/busybox")
        .is_file());
}

#[test]
fn basic_auth_with_credentials_from_the_auth_file() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig {
        htpasswd: Some(("vessel".into(), "s3cret".into())),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    write_layout(&work.path().join("oci"), "latest", &two_layers(), &["sh"]);
    let name = format!("{}/vesseltest/auth:latest", reg.host());
    skopeo_push(
        &work.path().join("oci"),
        &name,
        &["--dest-creds", "vessel:s3cret"],
    );

    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let o = opts_with_authfile(work.path());
    let e = do_pull(&store, &name, &o).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");

    let authfile = work.path().join("auth.json");
    auth::store(
        &authfile,
        &reg.host(),
        Some(&Credentials {
            username: "vessel".into(),
            password: "wrong".into(),
        }),
    )
    .unwrap();
    let e = do_pull(&store, &name, &o).unwrap_err();
    assert!(
        e.to_string().contains("incorrect username or password"),
        "{e}"
    );

    auth::store(
        &authfile,
        &reg.host(),
        Some(&Credentials {
            username: "vessel".into(),
            password: "s3cret".into(),
        }),
    )
    .unwrap();
    do_pull(&store, &name, &o).unwrap();
    check_pulled(&store, &name);
    assert_store_has_no_partials(root.path());
}

/// A fake registry serving `content` for `vesseltest/app`, through `mutate`.
fn fake(content: Content, mutate: impl Fn(&Req, Resp) -> Resp + Send + Sync + 'static) -> Fake {
    Fake::start(Arc::new(move |req: &Req| {
        mutate(req, content.answer("vesseltest/app", req))
    }))
}

fn fake_content() -> (tempfile::TempDir, Content, common::oci::Built) {
    let work = tempfile::tempdir().unwrap();
    let built = write_layout(&work.path().join("oci"), "latest", &two_layers(), &["sh"]);
    let c = Content::from_layout(&work.path().join("oci"), "latest");
    (work, c, built)
}

#[test]
fn bearer_token_auth_with_scopes() {
    let (work, content, _) = fake_content();
    let port_cell = Arc::new(std::sync::OnceLock::<u16>::new());
    let pc = port_cell.clone();
    let reg = Fake::start(Arc::new(move |req: &Req| {
        let port = *pc.get().unwrap();
        if req.path == "/token" {
            let basic = format!("Basic {}", base64_of("vessel:tok"));
            if req.headers.get("authorization") != Some(&basic) {
                return Resp::new(401, "{}");
            }
            return Resp::new(200, r#"{"token":"good-token","expires_in":300}"#);
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer good-token") {
            return Resp::new(401, r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="vesseltest",scope="repository:vesseltest/app:pull""#),
            );
        }
        content.answer("vesseltest/app", req)
    }));
    port_cell.set(reg.port).unwrap();
    let authfile = work.path().join("auth.json");
    auth::store(
        &authfile,
        &reg.host(),
        Some(&Credentials {
            username: "vessel".into(),
            password: "tok".into(),
        }),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let name = format!("{}/vesseltest/app:latest", reg.host());
    do_pull(&store, &name, &opts_with_authfile(work.path())).unwrap();
    check_pulled(&store, &name);
    let token_req = reg
        .requests()
        .into_iter()
        .find(|r| r.path == "/token")
        .unwrap();
    assert!(
        token_req
            .query
            .contains("scope=repository%3Avesseltest%2Fapp%3Apull"),
        "{}",
        token_req.query
    );
    assert!(
        token_req.query.contains("service=vesseltest"),
        "{}",
        token_req.query
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn lying_registries_are_refused_and_leave_no_partial_content() {
    let (work, content, built) = fake_content();
    let layer0 = built.layer_digests[0].clone();
    let layer1 = built.layer_digests[1].clone();
    let cfg = built.config_digest.clone();
    type Mutation = Box<dyn Fn(&Req, Resp) -> Resp + Send + Sync>;
    let other_port = common::registry::free_port();
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "manifest digest header lies",
            Box::new(|req: &Req, r: Resp| {
                if req.path.contains("/manifests/") {
                    let mut r = r;
                    r.headers.retain(|(k, _)| k != "Docker-Content-Digest");
                    return r.header(
                        "Docker-Content-Digest",
                        &format!("sha256:{}", "ab".repeat(32)),
                    );
                }
                r
            }),
            "digest mismatch",
        ),
        (
            "malformed manifest",
            Box::new(|req: &Req, r: Resp| {
                if req.path.contains("/manifests/") {
                    return Resp::new(200, b"{\"schemaVersion\":2,\"config\":".to_vec())
                        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json");
                }
                r
            }),
            "malformed manifest",
        ),
        (
            "malformed config",
            {
                let cfg = cfg.clone();
                Box::new(move |req: &Req, r: Resp| {
                    if req.path.ends_with(&cfg) {
                        return Resp::new(200, vec![b'{'; r.body.len()]);
                    }
                    r
                })
            },
            "digest mismatch",
        ),
        (
            "layer longer than its descriptor",
            {
                let l = layer1.clone();
                Box::new(move |req: &Req, mut r: Resp| {
                    if req.path.ends_with(&l) {
                        r.body.extend_from_slice(b"trailing junk");
                    }
                    r
                })
            },
            "size mismatch",
        ),
        (
            "layer shorter than its descriptor",
            {
                let l = layer0.clone();
                Box::new(move |req: &Req, mut r: Resp| {
                    if req.path.ends_with(&l) {
                        let n = r.body.len() / 2;
                        r.body.truncate(n);
                    }
                    r
                })
            },
            "size mismatch",
        ),
        (
            "layer bytes changed",
            {
                let l = layer1.clone();
                Box::new(move |req: &Req, mut r: Resp| {
                    if req.path.ends_with(&l) {
                        let n = r.body.len();
                        r.body[n - 5] ^= 0xff;
                    }
                    r
                })
            },
            "",
        ),
        (
            "redirect to another host",
            {
                let l = layer0.clone();
                Box::new(move |req: &Req, r: Resp| {
                    if req.path.ends_with(&l) {
                        return Resp::new(307, Vec::new())
                            .header("Location", &format!("http://127.0.0.2:{other_port}/evil"));
                    }
                    r
                })
            },
            "redirect",
        ),
    ];
    for (what, mutate, needle) in cases {
        let reg = fake(content.clone(), mutate);
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path()).unwrap());
        let mut o = opts_with_authfile(work.path());
        o.registry.max_attempts = 1;
        let e =
            do_pull(&store, &format!("{}/vesseltest/app:latest", reg.host()), &o).expect_err(what);
        let msg = format!("{e}");
        assert!(
            msg.contains(needle),
            "{what}: error {msg:?} does not mention {needle:?}"
        );
        assert!(store.images().unwrap().is_empty(), "{what}: image recorded");
        assert_store_has_no_partials(root.path());
        for l in [&layer0, &layer1] {
            let hex = l.trim_start_matches("sha256:");
            if what.contains("layer") || what.contains("redirect") {
                // the bad layer never gets a name in the store
                let bad = if what.contains("shorter") || what.contains("redirect") {
                    &layer0
                } else {
                    &layer1
                };
                if l == bad {
                    assert!(
                        !root.path().join("blobs/sha256").join(hex).exists(),
                        "{what}: bad blob stored"
                    );
                }
            }
        }
    }
}

#[test]
fn pulls_through_5xx_and_dropped_connections() {
    let (work, content, built) = fake_content();
    let layer = built.layer_digests[0].clone();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let manifest_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mh = manifest_hits.clone();
    let reg = fake(content, move |req: &Req, mut r: Resp| {
        // The first manifest answer is cut short too.
        if req.path.contains("/manifests/")
            && mh.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
        {
            r.cut_after = Some(r.body.len() / 2);
            return r;
        }
        if req.path.ends_with(&layer) {
            match h.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => return Resp::new(503, "busy"),
                1 => {
                    r.cut_after = Some(r.body.len() / 3);
                    return r;
                }
                _ => {}
            }
        }
        r
    });
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let name = format!("{}/vesseltest/app:latest", reg.host());
    do_pull(&store, &name, &opts_with_authfile(work.path())).unwrap();
    check_pulled(&store, &name);
    let ranged = reg
        .requests()
        .into_iter()
        .filter(|r| r.headers.contains_key("range"))
        .count();
    assert_eq!(
        ranged, 1,
        "the dropped download resumed with a Range request"
    );
}

struct Events(std::sync::Mutex<Vec<String>>);
impl vessel_image::registry::push::PushProgress for Events {
    fn event(&self, e: vessel_image::registry::push::PushEvent) {
        self.0.lock().unwrap().push(format!("{e:?}"));
    }
}

fn sha256_hex(data: &[u8]) -> String {
    common::oci::hex_of(data)
}

#[test]
fn pushed_images_are_byte_identical_for_skopeo_and_vessel() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig::default());
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let name = format!("{}/vesseltest/pushed:v1", reg.host());
    let opts = vessel_image::registry::RegistryOptions::default();
    let imp = vessel_image::store::ImportOptions {
        reference: Some(Reference::parse(&name).unwrap()),
        changes: vec!["CMD [\"sh\"]".into()],
        ..Default::default()
    };
    store.import(&busybox_rootfs()[..], &imp).unwrap();
    let ev = Arc::new(Events(Default::default()));
    let digest = rt()
        .block_on(vessel_image::registry::push::push(
            store.clone(),
            &name,
            &Reference::parse(&name).unwrap(),
            &opts,
            ev.clone(),
        ))
        .unwrap();
    assert!(ev
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("BlobPushed")));

    // skopeo sees exactly our manifest bytes, and its copy of every blob matches.
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw.stdout)),
        digest.to_string()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{name}"))
        .arg(format!("dir:{}", dir.path().join("d").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = std::fs::read(dir.path().join("d/manifest.json")).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&copied)),
        digest.to_string()
    );
    let m: serde_json::Value = serde_json::from_slice(&copied).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert_eq!(
            sha256_hex(&std::fs::read(dir.path().join("d").join(d)).unwrap()),
            d
        );
    }

    // Pushing again finds everything there; another repository mounts instead of uploading.
    let ev = Arc::new(Events(Default::default()));
    rt().block_on(vessel_image::registry::push::push(
        store.clone(),
        &name,
        &Reference::parse(&name).unwrap(),
        &opts,
        ev.clone(),
    ))
    .unwrap();
    assert!(
        ev.0.lock()
            .unwrap()
            .iter()
            .all(|e| !e.starts_with("BlobPushed")),
        "{:?}",
        ev.0.lock().unwrap()
    );
    let other = format!("{}/vesseltest/other:v2", reg.host());
    store.tag(&name, &other).unwrap();
    let ev = Arc::new(Events(Default::default()));
    rt().block_on(vessel_image::registry::push::push(
        store.clone(),
        &other,
        &Reference::parse(&other).unwrap(),
        &opts,
        ev.clone(),
    ))
    .unwrap();
    assert!(
        ev.0.lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("BlobMounted")),
        "{:?}",
        ev.0.lock().unwrap()
    );

    // And a fresh store pulls it back with the same ids.
    let root2 = tempfile::tempdir().unwrap();
    let store2 = Arc::new(Store::open(root2.path()).unwrap());
    let res = do_pull(&store2, &name, &PullOptions::default()).unwrap();
    assert_eq!(res.digest, digest);
    assert_eq!(res.id, store.lookup(&name).unwrap());
    assert!(store2.layer_paths(&name).unwrap()[0]
        .join("bin/busybox")
        .is_file());
}

#[test]
fn docker_hub_names_are_pulled_through_a_mirror() {
    let (work, content, built) = fake_content();
    let reg = fake(content, |_, r| r);
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let mut o = opts_with_authfile(work.path());
    o.mirrors = serde_json::from_str(&format!(
        r#"{{"registry-mirrors":["http://{}"]}}"#,
        reg.host()
    ))
    .unwrap();
    // docker.io/vesseltest/app: served by the mirror, never by the Hub.
    let res = do_pull(&store, "vesseltest/app", &o).unwrap();
    assert_eq!(res.digest.as_str(), built.manifest_digest);
    let out = store.images().unwrap();
    assert_eq!(out[0].repository.as_deref(), Some("vesseltest/app"));
    assert!(reg
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/v2/vesseltest/app/manifests/latest")));
}

#[test]
fn platform_is_chosen_from_an_index() {
    let (work, mut content, built) = fake_content();
    let host = common::oci::host_arch();
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let missing = format!("sha256:{}", "e".repeat(64));
    let man_size = content.blobs[&built.manifest_digest].len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 10, "platform": {"architecture": other, "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": built.manifest_digest, "size": man_size, "platform": {"architecture": host, "os": "linux"}},
        ]
    });
    let data = serde_json::to_vec(&index).unwrap();
    let index_digest = format!("sha256:{}", common::oci::hex_of(&data));
    content.manifests.insert(
        "multi".into(),
        ("application/vnd.oci.image.index.v1+json".into(), data),
    );
    let reg = fake(content, |_, r| r);
    let name = format!("{}/vesseltest/app:multi", reg.host());

    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let res = do_pull(&store, &name, &opts_with_authfile(work.path())).unwrap();
    assert_eq!(
        res.digest.as_str(),
        index_digest,
        "the repo digest is the index's, as docker records it"
    );
    assert_eq!(res.id.as_str(), built.config_digest);

    let mut o = opts_with_authfile(work.path());
    o.platform = Some(vessel_image::manifest::Platform::parse(&format!("linux/{other}")).unwrap());
    let e = do_pull(&store, &name, &o).unwrap_err().to_string();
    assert!(
        e.contains("manifest unknown"),
        "chose the {other} entry: {e}"
    );
    o.platform = Some(vessel_image::manifest::Platform::parse("linux/s390x").unwrap());
    let e = do_pull(&store, &name, &o).unwrap_err().to_string();
    assert!(
        e.contains("no image for platform linux/s390x") && e.contains(&format!("linux/{other}")),
        "{e}"
    );
}

#[test]
fn concurrent_pulls_of_the_same_image_share_one_copy() {
    let (work, content, _) = fake_content();
    let reg = fake(content, |_, r| r);
    let root = tempfile::tempdir().unwrap();
    let name = format!("{}/vesseltest/app:latest", reg.host());
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    // A Store per thread: its own database connection, as another process has.
                    let store = Arc::new(Store::open(root.path()).unwrap());
                    do_pull(&store, &name, &opts_with_authfile(work.path())).unwrap()
                })
            })
            .collect();
        let ids: Vec<_> = hs.into_iter().map(|h| h.join().unwrap().id).collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]));
    });
    let snaps: Vec<String> = tree(&root.path().join("snapshots"))
        .into_iter()
        .filter(|p| !p.contains('/'))
        .collect();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_store_has_no_partials(root.path());
    let store = Store::open(root.path()).unwrap();
    check_pulled(&store, &name);
}

#[test]
fn pull_by_digest_refuses_a_different_manifest() {
    let (work, content, built) = fake_content();
    let wanted = built.manifest_digest.clone();
    let reg = fake(content, move |req: &Req, mut r: Resp| {
        if req.path.ends_with(&format!("manifests/{wanted}")) {
            r.body.extend_from_slice(b"\n");
        }
        r
    });
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let e = do_pull(
        &store,
        &format!("{}/vesseltest/app@{}", reg.host(), built.manifest_digest),
        &opts_with_authfile(work.path()),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "manifest {}: digest mismatch",
            built.manifest_digest
        )),
        "{msg}"
    );
    assert!(tree(&root.path().join("blobs/sha256")).is_empty());
}

#[test]
fn docker_registry_with_token_auth() {
    if !Registry::available() {
        return;
    }
    let tokens = common::token::TokenServer::start("vessel", "t0ken");
    let reg = Registry::start(RegistryConfig {
        token: Some((
            tokens.realm(),
            common::token::SERVICE.into(),
            common::token::ISSUER.into(),
            tokens.cert_pem.clone(),
        )),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let name = format!("{}/vesseltest/tok:v1", reg.host());
    let imp = vessel_image::store::ImportOptions {
        reference: Some(Reference::parse(&name).unwrap()),
        ..Default::default()
    };
    store.import(&busybox_rootfs()[..], &imp).unwrap();

    let mut opts = vessel_image::registry::RegistryOptions {
        auth_file: Some(work.path().join("auth.json")),
        ..Default::default()
    };
    let push = |o: &vessel_image::registry::RegistryOptions| {
        rt().block_on(vessel_image::registry::push::push(
            store.clone(),
            &name,
            &Reference::parse(&name).unwrap(),
            o,
            Arc::new(vessel_image::registry::push::NoPushProgress),
        ))
    };
    let e = push(&opts).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    opts.credentials = Some(Credentials {
        username: "vessel".into(),
        password: "t0ken".into(),
    });
    let digest = push(&opts).unwrap();

    let root2 = tempfile::tempdir().unwrap();
    let store2 = Arc::new(Store::open(root2.path()).unwrap());
    let mut po = opts_with_authfile(work.path());
    po.registry.credentials = opts.credentials.clone();
    let res = do_pull(&store2, &name, &po).unwrap();
    assert_eq!(res.digest, digest);
    let scopes: Vec<String> = tokens
        .fake
        .requests()
        .iter()
        .map(|r| r.query.clone())
        .collect();
    assert!(
        scopes.iter().any(|q| q.contains("pull%2Cpush")),
        "push asked for pull,push: {scopes:?}"
    );
    assert!(
        scopes
            .iter()
            .any(|q| q.contains("vesseltest%2Ftok%3Apull&")
                || q.ends_with("vesseltest%2Ftok%3Apull")),
        "pull asked for pull only: {scopes:?}"
    );
}

#[test]
fn large_blobs_go_up_in_chunks() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig::default());
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    // 20 MB of noise: larger than one upload chunk (16 MiB), so PATCH + PUT is used.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..20_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let layer = RawTar::new().file("noise.bin", &noise).finish();
    let name = format!("{}/vesseltest/big:v1", reg.host());
    let imp = vessel_image::store::ImportOptions {
        reference: Some(Reference::parse(&name).unwrap()),
        ..Default::default()
    };
    store.import(&layer[..], &imp).unwrap();
    let opts = vessel_image::registry::RegistryOptions::default();
    let digest = rt()
        .block_on(vessel_image::registry::push::push(
            store.clone(),
            &name,
            &Reference::parse(&name).unwrap(),
            &opts,
            Arc::new(vessel_image::registry::push::NoPushProgress),
        ))
        .unwrap();
    let root2 = tempfile::tempdir().unwrap();
    let store2 = Arc::new(Store::open(root2.path()).unwrap());
    assert_eq!(
        do_pull(&store2, &name, &PullOptions::default())
            .unwrap()
            .digest,
        digest
    );
    assert_eq!(
        std::fs::read(store2.layer_paths(&name).unwrap()[0].join("noise.bin")).unwrap(),
        noise
    );
}

#[test]
fn schema1_manifests_are_refused_like_docker() {
    if !Registry::available() {
        return;
    }
    let reg = Registry::start(RegistryConfig {
        schema1: true,
        ..Default::default()
    });
    let base = format!("http://{}/v2/vesseltest/old", reg.host());
    let layer = common::gzip(&RawTar::new().file("f", b"x").finish());
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let http = reqwest::Client::new();
    rt().block_on(async {
        let r = http
            .post(format!("{base}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let r = http
            .put(format!("{loc}&digest={layer_digest}"))
            .body(layer.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        let m = common::schema1::signed_manifest("vesseltest/old", "v1", &layer_digest);
        let r = http
            .put(format!("{base}/manifests/v1"))
            .header(
                "Content-Type",
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
            )
            .body(m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    });
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(root.path()).unwrap());
    let name = format!("{}/vesseltest/old:v1", reg.host());
    let e = do_pull(&store, &name, &PullOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Schema1 { .. }), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "Docker Image Format v1 and Docker Image manifest version 2, schema 1 support has been removed. Suggest the author of {name} to upgrade"
        )),
        "{e}"
    );
    assert!(store.images().unwrap().is_empty());
    assert!(tree(&root.path().join("blobs/sha256")).is_empty());
    assert_store_has_no_partials(root.path());
}
