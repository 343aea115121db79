//! A tiny, scriptable registry on 127.0.0.1 for what the real one will not do: token auth
//! without a JWT stack, and lies — wrong digests and sizes, redirects elsewhere, malformed
//! JSON, 5xx and dropped connections. Blocking std networking, one thread per connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone, Debug, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this many body bytes (a dropped connection).
    pub cut_after: Option<usize>,
}

impl Resp {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_after: None,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

pub struct Fake {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub log: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    pub fn start(handler: Handler) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, l) = (handler.clone(), l.clone());
                std::thread::spawn(move || serve(conn, h, l));
            }
        });
        Fake {
            port,
            stop,
            thread: Some(thread),
            log,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, handler: Handler, log: Arc<Mutex<Vec<Req>>>) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = target
        .split_once('?')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap_or((target, String::new()));
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let req = Req {
        method: method.clone(),
        path,
        query,
        headers,
    };
    log.lock().unwrap().push(req.clone());
    let resp = handler(&req);
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let _ = out.write_all(head.as_bytes());
    if method != "HEAD" {
        let n = resp
            .cut_after
            .unwrap_or(resp.body.len())
            .min(resp.body.len());
        let _ = out.write_all(&resp.body[..n]);
    }
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
}

/// The content a fake registry serves for one repository.
#[derive(Clone, Default)]
pub struct Content {
    pub manifests: HashMap<String, (String, Vec<u8>)>, // tag or digest → (media type, bytes)
    pub blobs: HashMap<String, Vec<u8>>,
}

impl Content {
    /// Serves the distribution API for `repo` honestly (Range included).
    pub fn answer(&self, repo: &str, req: &Req) -> Resp {
        if req.path == "/v2/" {
            return Resp::new(200, "{}");
        }
        let Some(rest) = req.path.strip_prefix(&format!("/v2/{repo}/")) else {
            return Resp::new(404, "{}");
        };
        if let Some(r) = rest.strip_prefix("manifests/") {
            return match self.manifests.get(r) {
                Some((mt, data)) => Resp::new(200, data.clone())
                    .header("Content-Type", mt)
                    .header(
                        "Docker-Content-Digest",
                        &format!("sha256:{}", super::oci::hex_of(data)),
                    ),
                None => Resp::new(
                    404,
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                ),
            };
        }
        if let Some(d) = rest.strip_prefix("blobs/") {
            return match self.blobs.get(d) {
                Some(data) => match req
                    .headers
                    .get("range")
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                {
                    Some(from) if from < data.len() => Resp::new(206, data[from..].to_vec()),
                    _ => Resp::new(200, data.clone()),
                },
                None => Resp::new(
                    404,
                    r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
                ),
            };
        }
        Resp::new(404, "{}")
    }

    /// Loads an OCI layout written by `oci::write_layout` under `tag`.
    pub fn from_layout(dir: &std::path::Path, tag: &str) -> Content {
        let mut c = Content::default();
        for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            c.blobs.insert(
                format!("sha256:{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            );
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let d = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let m = c.blobs[&d].clone();
        let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
        c.manifests.insert(tag.into(), (mt.clone(), m.clone()));
        c.manifests.insert(d, (mt, m));
        c
    }
}
