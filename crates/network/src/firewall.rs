//! nftables: one table of our own (`inet <name>`), changed only through atomic `nft -j -f -`
//! transactions. Other tables (docker's, podman's, the admin's) are never read or touched.
//!
//! Layout — base chains hold a fixed handful of rules that dispatch through verdict maps, and
//! each network and each container gets chains of its own. Adding or removing a container
//! is then "add/delete map elements + add/delete one chain" in one transaction, with no
//! rule handles to look up and no rule order to get wrong:
//!
//! ```text
//! prerouting, output (nat, dstnat):
//!     ip  daddr . l4proto . th dport vmap @pub4_addr     # -p 127.0.0.1:8080:80
//!     fib daddr type local ipv4 l4proto . th dport vmap @pub4_any   # -p 8080:80
//!     (the same for ip6 with @pub6_addr, @pub6_any)
//!         -> chain c-<hash(container, network)>: l4proto tcp th dport 8080 dnat ip to C:80
//! postrouting (nat, srcnat):   oifname vmap @post_oif ; iifname vmap @post_iif
//!         -> chain n-<net>-post: masquerade outbound, hairpin, and 127.0.0.1 clients
//! forward (filter):            oifname vmap @fwd_oif  ; iifname vmap @fwd_iif
//!         -> chain n-<net>-fwd: isolation between networks, --internal, replies
//! ```
//!
//! Publishing on 127.0.0.1: the output-hook DNAT sends loopback-sourced packets to the
//! bridge, which the kernel allows only with `route_localnet=1` on the bridge (set by
//! [`crate::Host::create_network`]); `n-<net>-post` then masquerades them to the gateway
//! address so the container's reply comes back. This is netavark's approach; docker uses a
//! userspace proxy (docker-proxy) instead, which costs a process per port.

use std::net::IpAddr;
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::Network;
use crate::error::{Error, Result};
use crate::names;
use crate::ports::PublishedPort;

const FAMILY: &str = "inet";
const DISPATCH_MAPS: [&str; 4] = ["fwd_oif", "fwd_iif", "post_oif", "post_iif"];
const PUB_MAPS: [&str; 4] = ["pub4_addr", "pub4_any", "pub6_addr", "pub6_any"];

/// The nft binary; the engine may point elsewhere via [`Firewall::with_nft`].
pub const NFT: &str = "nft";

/// Our nftables table.
#[derive(Clone, Debug)]
pub struct Firewall {
    table: String,
    nft: String,
}

fn m(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}
fn m_ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}
fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}
fn prefix(net: &ipnet::IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}
fn ct_in(key: &str, right: Value) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": key}}, "right": right}})
}

impl Firewall {
    pub fn new(table: impl Into<String>) -> Firewall {
        Firewall {
            table: table.into(),
            nft: NFT.into(),
        }
    }

    pub fn with_nft(mut self, nft: impl Into<String>) -> Firewall {
        self.nft = nft.into();
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn obj(&self, kind: &str, mut body: Value) -> Value {
        body["family"] = json!(FAMILY);
        body["table"] = json!(self.table);
        json!({ kind: body })
    }

    fn rule(&self, chain: &str, expr: Vec<Value>) -> Value {
        json!({"add": self.obj("rule", json!({"chain": chain, "expr": expr}))})
    }

    fn chain(&self, op: &str, name: &str) -> Value {
        json!({ op: self.obj("chain", json!({"name": name})) })
    }

    fn element(&self, op: &str, map: &str, key: Value, target: Option<&str>) -> Value {
        let elem = match target {
            Some(t) => json!([[key, {"jump": {"target": t}}]]),
            None => json!([key]),
        };
        json!({ op: self.obj("element", json!({"name": map, "elem": elem})) })
    }

    /// Run one transaction: all of `cmds` apply, or none.
    pub async fn apply(&self, cmds: Vec<Value>) -> Result<()> {
        if cmds.is_empty() {
            return Ok(());
        }
        let doc = json!({"nftables": cmds}).to_string();
        let out = self
            .run_nft(&["-j", "-f", "-"], Some(doc.as_bytes()))
            .await?;
        if !out.status.success() {
            return Err(Error::Nft(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    async fn run_nft(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<std::process::Output> {
        let mut child = Command::new(&self.nft)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("run {}", self.nft), e))?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data)
                .await
                .map_err(|e| Error::io("write to nft", e))?;
            drop(pipe);
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| Error::io("wait for nft", e))
    }

    /// The table as nft's JSON list, or None when it does not exist.
    pub async fn list(&self) -> Result<Option<Vec<Value>>> {
        let out = self
            .run_nft(&["-j", "list", "table", FAMILY, &self.table], None)
            .await?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(Error::Nft(err.trim().to_string()));
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| Error::Nft(format!("bad JSON from nft: {e}")))?;
        Ok(Some(v["nftables"].as_array().cloned().unwrap_or_default()))
    }

    fn base_cmds(&self) -> Vec<Value> {
        // A table object carries its own name, not a parent table.
        let mut c = vec![json!({"add": {"table": {"family": FAMILY, "name": self.table}}})];
        let base = |name: &str, ty: &str, hook: &str, prio: i32| json!({"add": self.obj("chain", json!({"name": name, "type": ty, "hook": hook, "prio": prio, "policy": "accept"}))});
        c.push(base("prerouting", "nat", "prerouting", -100));
        c.push(base("output", "nat", "output", -100));
        c.push(base("postrouting", "nat", "postrouting", 100));
        c.push(base("forward", "filter", "forward", 0));
        for name in DISPATCH_MAPS {
            c.push(json!({"add": self.obj("map", json!({"name": name, "type": "ifname", "map": "verdict"}))}));
        }
        let maps = [
            (
                "pub4_addr",
                json!(["ipv4_addr", "inet_proto", "inet_service"]),
            ),
            ("pub4_any", json!(["inet_proto", "inet_service"])),
            (
                "pub6_addr",
                json!(["ipv6_addr", "inet_proto", "inet_service"]),
            ),
            ("pub6_any", json!(["inet_proto", "inet_service"])),
        ];
        for (name, ty) in maps {
            c.push(json!({"add": self.obj("map", json!({"name": name, "type": ty, "map": "verdict"}))}));
        }
        let port_key = |addr: Option<&str>| {
            let mut k = vec![];
            if let Some(fam) = addr {
                k.push(payload(fam, "daddr"));
            }
            k.push(meta("l4proto"));
            k.push(payload("th", "dport"));
            json!({"concat": k})
        };
        for chain in ["prerouting", "output"] {
            for (fam, nfproto, addr_map, any_map) in [
                ("ip", "ipv4", "@pub4_addr", "@pub4_any"),
                ("ip6", "ipv6", "@pub6_addr", "@pub6_any"),
            ] {
                c.push(self.rule(
                    chain,
                    vec![json!({"vmap": {"key": port_key(Some(fam)), "data": addr_map}})],
                ));
                c.push(self.rule(
                    chain,
                    vec![
                        m(meta("nfproto"), json!(nfproto)),
                        m(
                            json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                            json!("local"),
                        ),
                        json!({"vmap": {"key": port_key(None), "data": any_map}}),
                    ],
                ));
            }
        }
        for (chain, prefix) in [("postrouting", "post"), ("forward", "fwd")] {
            for dir in ["oif", "iif"] {
                c.push(self.rule(
                    chain,
                    vec![json!({"vmap": {"key": meta(&format!("{dir}name")), "data": format!("@{prefix}_{dir}")}})],
                ));
            }
        }
        c
    }

    /// Create the table with its base chains and maps unless it exists. Safe against a
    /// concurrent creator: the creating transaction starts with `create table`, which fails
    /// as a whole when someone else was first.
    pub async fn ensure_table(&self) -> Result<()> {
        if self.list().await?.is_some() {
            return Ok(());
        }
        let mut cmds = self.base_cmds();
        cmds[0] = json!({"create": {"table": {"family": FAMILY, "name": self.table}}});
        match self.apply(cmds).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if self.list().await?.is_some() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Delete the whole table (`vessel system reset`, tests). Idempotent.
    pub async fn delete_table(&self) -> Result<()> {
        if self.list().await?.is_none() {
            return Ok(());
        }
        self.apply(vec![
            json!({"delete": {"table": {"family": FAMILY, "name": self.table}}}),
        ])
        .await
    }

    /// The transaction that installs a network's chains and dispatch elements. Idempotent
    /// (chains are flushed before their rules are added), so it doubles as "restore".
    pub fn network_cmds(&self, net: &Network) -> Vec<Value> {
        let br = json!(net.bridge);
        let fwd = names::network_chain(&net.id, "fwd");
        let post = names::network_chain(&net.id, "post");
        let mut c = vec![
            self.chain("add", &fwd),
            self.chain("flush", &fwd),
            self.chain("add", &post),
            self.chain("flush", &post),
        ];
        let oif = || m(meta("oifname"), br.clone());
        let iif = || m(meta("iifname"), br.clone());
        // forward: entered when either side of the packet is our bridge.
        c.push(self.rule(&fwd, vec![oif(), iif(), json!({"accept": null})]));
        c.push(self.rule(
            &fwd,
            vec![
                oif(),
                ct_in("state", json!(["established", "related"])),
                json!({"accept": null}),
            ],
        ));
        if !net.internal {
            c.push(self.rule(
                &fwd,
                vec![
                    oif(),
                    ct_in("status", json!("dnat")),
                    json!({"accept": null}),
                ],
            ));
        }
        // Unsolicited traffic into the bridge — from outside or from another network — is
        // dropped (docker's isolation); published ports were accepted above.
        c.push(self.rule(&fwd, vec![oif(), json!({"drop": null})]));
        c.push(self.rule(
            &fwd,
            vec![
                iif(),
                json!({if net.internal { "drop" } else { "accept" }: null}),
            ],
        ));
        if !net.internal {
            // Hairpin: a container reaching a published port that lands on its own network
            // must see the reply come back through the host, so hide its source. No iifname
            // test: with br_netfilter the packet is DNATed at the bridge layer, and its
            // postrouting pass has no input device.
            for s in &net.subnets {
                let fam = if s.is_v6() { "ip6" } else { "ip" };
                c.push(self.rule(
                    &post,
                    vec![
                        oif(),
                        ct_in("status", json!("dnat")),
                        m(payload(fam, "saddr"), prefix(&s.subnet)),
                        json!({"masquerade": null}),
                    ],
                ));
            }
            // Host clients on 127.0.0.1 (route_localnet): the container cannot answer a
            // loopback source.
            c.push(self.rule(
                &post,
                vec![
                    oif(),
                    m(
                        payload("ip", "saddr"),
                        json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                    ),
                    json!({"masquerade": null}),
                ],
            ));
            if net.masquerade {
                for s in &net.subnets {
                    let fam = if s.is_v6() { "ip6" } else { "ip" };
                    c.push(self.rule(
                        &post,
                        vec![
                            iif(),
                            m_ne(meta("oifname"), br.clone()),
                            m(payload(fam, "saddr"), prefix(&s.subnet)),
                            json!({"masquerade": null}),
                        ],
                    ));
                }
            }
        }
        // Dispatch: look up by bridge name, oif first so isolation drops win.
        for (map, chain) in [
            ("fwd_oif", &fwd),
            ("fwd_iif", &fwd),
            ("post_oif", &post),
            ("post_iif", &post),
        ] {
            c.push(self.element("add", map, br.clone(), Some(chain)));
        }
        c
    }

    /// Install a network's rules (creating the table if needed).
    pub async fn add_network(&self, net: &Network) -> Result<()> {
        self.ensure_table().await?;
        self.apply(self.network_cmds(net)).await
    }

    /// Remove a network's rules. Idempotent: only what exists is deleted.
    pub async fn remove_network(&self, net: &Network) -> Result<()> {
        let Some(items) = self.list().await? else {
            return Ok(());
        };
        let chains = [
            names::network_chain(&net.id, "fwd"),
            names::network_chain(&net.id, "post"),
        ];
        let mut cmds = self.delete_elements_for(&items, &DISPATCH_MAPS, &chains);
        cmds.extend(self.delete_chains(&items, &chains));
        self.apply(cmds).await
    }

    /// The transaction that publishes a container's ports on one network.
    pub fn container_cmds(
        &self,
        net: &Network,
        container_id: &str,
        v4: Option<IpAddr>,
        v6: Option<IpAddr>,
        ports: &[PublishedPort],
    ) -> Vec<Value> {
        let chain = names::container_chain(container_id, &net.id);
        let mut c = vec![self.chain("add", &chain), self.chain("flush", &chain)];
        let mut elems = Vec::new();
        for p in ports {
            let proto = p.protocol.as_str();
            let targets: Vec<(IpAddr, &str, &str)> = match p.host_ip {
                Some(IpAddr::V4(_)) => v4.map(|c| (c, "ip", "pub4_addr")).into_iter().collect(),
                Some(IpAddr::V6(_)) => v6.map(|c| (c, "ip6", "pub6_addr")).into_iter().collect(),
                None => v4
                    .map(|c| (c, "ip", "pub4_any"))
                    .into_iter()
                    .chain(v6.map(|c| (c, "ip6", "pub6_any")))
                    .collect(),
            };
            for (caddr, fam, map) in targets {
                let mut expr = Vec::new();
                if let Some(h) = p.host_ip {
                    expr.push(m(payload(fam, "daddr"), json!(h.to_string())));
                }
                expr.push(m(meta("l4proto"), json!(proto)));
                expr.push(m(payload("th", "dport"), json!(p.host_port)));
                let nat_family = if fam == "ip" { "ip" } else { "ip6" };
                expr.push(json!({"dnat": {"family": nat_family, "addr": caddr.to_string(), "port": p.container_port}}));
                c.push(self.rule(&chain, expr));
                let key = match p.host_ip {
                    Some(h) => json!({"concat": [h.to_string(), proto, p.host_port]}),
                    None => json!({"concat": [proto, p.host_port]}),
                };
                elems.push(self.element("add", map, key, Some(&chain)));
            }
        }
        c.extend(elems);
        c
    }

    /// Publish a container's ports (creating the table if needed). One transaction.
    pub async fn add_container(
        &self,
        net: &Network,
        container_id: &str,
        v4: Option<IpAddr>,
        v6: Option<IpAddr>,
        ports: &[PublishedPort],
    ) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        self.ensure_table().await?;
        self.apply(self.container_cmds(net, container_id, v4, v6, ports))
            .await
    }

    /// Unpublish a container's ports on a network: its map elements and its chain go in one
    /// transaction. Found from the kernel's state, so it works without the port list.
    pub async fn remove_container(&self, net: &Network, container_id: &str) -> Result<()> {
        let Some(items) = self.list().await? else {
            return Ok(());
        };
        let chains = [names::container_chain(container_id, &net.id)];
        let mut cmds = self.delete_elements_for(&items, &PUB_MAPS, &chains);
        cmds.extend(self.delete_chains(&items, &chains));
        self.apply(cmds).await
    }

    /// The nft rules (as JSON) of a container's chain, for `inspect --kernel` and tests.
    pub async fn container_rules(&self, net: &Network, container_id: &str) -> Result<Vec<Value>> {
        let chain = names::container_chain(container_id, &net.id);
        let Some(items) = self.list().await? else {
            return Ok(vec![]);
        };
        Ok(items
            .into_iter()
            .filter(|i| i["rule"]["chain"] == json!(chain))
            .map(|i| i["rule"].clone())
            .collect())
    }

    fn delete_elements_for(&self, items: &[Value], maps: &[&str], chains: &[String]) -> Vec<Value> {
        let mut out = Vec::new();
        for it in items {
            let map = &it["map"];
            let Some(name) = map["name"].as_str() else {
                continue;
            };
            if !maps.contains(&name) {
                continue;
            }
            for e in map["elem"].as_array().into_iter().flatten() {
                let target = e[1]["jump"]["target"]
                    .as_str()
                    .or_else(|| e[1]["goto"]["target"].as_str());
                if target.is_some_and(|t| chains.iter().any(|c| c == t)) {
                    out.push(self.element("delete", name, e[0].clone(), None));
                }
            }
        }
        out
    }

    fn delete_chains(&self, items: &[Value], chains: &[String]) -> Vec<Value> {
        let mut out = Vec::new();
        for c in chains {
            if items.iter().any(|i| i["chain"]["name"].as_str() == Some(c)) {
                out.push(self.chain("flush", c));
                out.push(self.chain("delete", c));
            }
        }
        out
    }
}
