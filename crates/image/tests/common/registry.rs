//! The Debian `docker-registry`, started on 127.0.0.1 on a free port with storage in a temp
//! dir, optionally with TLS (self-signed, client certificates optional), htpasswd Basic auth
//! or token auth; killed on drop.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = "/usr/bin/docker-registry";

#[derive(Default)]
pub struct RegistryConfig {
    pub tls: bool,
    /// With `tls`: PEM of the certificate(s) client certificates must chain to; the
    /// registry then refuses clients without one.
    pub client_ca: Option<String>,
    /// Accept Docker schema 1 manifests (off by default since distribution 2.8).
    pub schema1: bool,
    pub htpasswd: Option<(String, String)>,
    /// Token auth: (realm URL, service, issuer, PEM of the cert that signs tokens).
    pub token: Option<(String, String, String, String)>,
}

pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    pub tls: bool,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn available() -> bool {
        Path::new(BINARY).exists()
    }

    pub fn start(cfg: RegistryConfig) -> Registry {
        // A free port can be taken between our probe and the registry's bind: retry.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&cfg) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    fn try_start(cfg: &RegistryConfig) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if cfg.tls {
            let ck =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                    .map_err(|e| e.to_string())?;
            std::fs::write(dir.path().join("cert.pem"), ck.cert.pem())
                .map_err(|e| e.to_string())?;
            std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem())
                .map_err(|e| e.to_string())?;
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            );
            if let Some(pem) = &cfg.client_ca {
                std::fs::write(dir.path().join("client-ca.pem"), pem).map_err(|e| e.to_string())?;
                yaml += &format!(
                    "    clientcas:\n      - {}\n",
                    dir.path().join("client-ca.pem").display()
                );
            }
        }
        if cfg.schema1 {
            yaml += "compatibility:\n  schema1:\n    enabled: true\n";
        }
        if let Some((u, p)) = &cfg.htpasswd {
            let hash = bcrypt::hash(p, 5).map_err(|e| e.to_string())?;
            std::fs::write(dir.path().join("htpasswd"), format!("{u}:{hash}\n"))
                .map_err(|e| e.to_string())?;
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: vesseltest\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        if let Some((realm, service, issuer, pem)) = &cfg.token {
            std::fs::write(dir.path().join("token.pem"), pem).map_err(|e| e.to_string())?;
            yaml += &format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                dir.path().join("token.pem").display()
            );
        }
        let conf = dir.path().join("config.yml");
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(yaml.as_bytes()))
            .map_err(|e| e.to_string())?;
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut reg = Registry {
            port,
            dir,
            child,
            tls: cfg.tls,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = reg.child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("not listening after 20s".into())
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The self-signed server certificate of a TLS registry (PEM).
    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cert.pem")).unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
