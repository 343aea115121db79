//! Root tests on the real kernel: bridges, veths, netns, IPAM, nftables publishing and
//! rollback. Each test uses its own 10.231.N.0/24 (this host routes only 192.0.2.0/24) and
//! its own names; the Fixture's Drop removes everything even when an assertion fails.

mod common;

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::Command;

use common::*;
use vessel_network::{names, parse_port_spec, AttachRequest, Error, FailPoint, PortMapping};

fn ports(specs: &[&str]) -> Vec<PortMapping> {
    specs
        .iter()
        .flat_map(|s| parse_port_spec(s).unwrap())
        .collect()
}

#[tokio::test]
async fn containers_talk_and_published_ports_answer() {
    if skip_unless_root() {
        return;
    }
    let mut fx = Fixture::new("pub");
    let host = fx.host();
    let net = fx.network("pubnet", &["10.231.1.0/24"], false);
    host.create_network(&net).await.expect("create network");
    let (pa, fa) = fx.container("a");
    let (pb, fb) = fx.container("b");
    let published = ports(&["127.0.0.1:18081:80", "18082:80", "10.231.1.1:18083:80"]);
    let a = host
        .attach(
            &net,
            &AttachRequest {
                ports: &published,
                ..attach_request("ctr-a", fa.as_fd())
            },
        )
        .await
        .expect("attach a");
    let b = host
        .attach(&net, &attach_request("ctr-b", fb.as_fd()))
        .await
        .expect("attach b");
    let ip_a = a.ipv4().unwrap().to_string();
    assert_eq!(ip_a, "10.231.1.2");
    assert_eq!(b.ipv4().unwrap().to_string(), "10.231.1.3");
    assert_eq!(
        a.host_veth,
        names::veth_name(&fx.ctx.link_prefix, "ctr-a", &net.id)
    );

    // What the kernel really has inside the container.
    let addr = in_ns(&pa, &["ip", "-o", "addr", "show", "eth0"]).unwrap();
    assert!(addr.contains("inet 10.231.1.2/24"), "{addr}");
    let link = in_ns(&pa, &["ip", "-o", "link", "show", "eth0"]).unwrap();
    assert!(
        link.contains("mtu 1500") && link.contains("state UP"),
        "{link}"
    );
    let route = in_ns(&pa, &["ip", "route", "show", "default"]).unwrap();
    assert!(route.contains("default via 10.231.1.1 dev eth0"), "{route}");
    assert!(in_ns(&pa, &["ip", "-o", "link", "show", "lo"])
        .unwrap()
        .contains("UP"));
    let master = Command::new("ip")
        .args(["-o", "link", "show", &a.host_veth])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&master.stdout).contains(&format!("master {}", net.bridge)));

    // Container to container.
    in_ns(&pb, &["busybox", "ping", "-c", "1", "-W", "2", &ip_a]).expect("b pings a");
    fx.httpd(&pa, "hello from a");
    let body = in_ns(
        &pb,
        &[
            "timeout",
            "3",
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{ip_a}/"),
        ],
    )
    .expect("b fetches a");
    assert_eq!(body, "hello from a");

    // Published: from the host on 127.0.0.1 (output DNAT + route_localnet), on the bridge
    // gateway (a local address: wildcard binding), and on a specific host address.
    assert_eq!(
        wget("http://127.0.0.1:18081/").expect("127.0.0.1 publish"),
        "hello from a"
    );
    assert_eq!(
        wget("http://10.231.1.1:18082/").expect("wildcard publish"),
        "hello from a"
    );
    assert_eq!(
        wget("http://10.231.1.1:18083/").expect("host-ip publish"),
        "hello from a"
    );
    // 127.0.0.1:18083 was not published on that address.
    assert!(wget("http://127.0.0.1:18083/").is_err());
    // From the other container through the published port, and hairpin: a reaching its
    // own published port.
    assert_eq!(
        in_ns(
            &pb,
            &[
                "timeout",
                "3",
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://10.231.1.1:18082/"
            ]
        )
        .expect("b via publish"),
        "hello from a"
    );
    assert_eq!(
        in_ns(
            &pa,
            &[
                "timeout",
                "3",
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://10.231.1.1:18082/"
            ]
        )
        .expect("hairpin"),
        "hello from a"
    );

    // From "another host": a netns behind its own veth, reaching the host's address there
    // (prerouting DNAT, then forward into the bridge).
    let (pe, _fe) = fx.container("ext");
    let ext_host = format!("{}x", fx.ctx.link_prefix);
    let ext_peer = format!("{}y", fx.ctx.link_prefix);
    let sh = |args: &[&str]| {
        assert!(
            Command::new("ip").args(args).status().unwrap().success(),
            "ip {args:?}"
        )
    };
    sh(&[
        "link",
        "add",
        &ext_host,
        "type",
        "veth",
        "peer",
        "name",
        &ext_peer,
        "netns",
        pe.to_str().unwrap(),
    ]);
    sh(&["addr", "add", "10.231.201.1/30", "dev", &ext_host]);
    sh(&["link", "set", &ext_host, "up"]);
    in_ns(
        &pe,
        &["ip", "addr", "add", "10.231.201.2/30", "dev", &ext_peer],
    )
    .unwrap();
    in_ns(&pe, &["ip", "link", "set", &ext_peer, "up"]).unwrap();
    in_ns(&pe, &["ip", "link", "set", "lo", "up"]).unwrap();
    assert_eq!(
        in_ns(
            &pe,
            &[
                "timeout",
                "3",
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://10.231.201.1:18082/"
            ]
        )
        .expect("from another host"),
        "hello from a"
    );
    // The 127.0.0.1-only binding is not reachable from outside.
    assert!(in_ns(
        &pe,
        &[
            "timeout",
            "3",
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            "http://10.231.201.1:18081/"
        ]
    )
    .is_err());
    // Unsolicited traffic straight to the container address from outside is dropped.
    in_ns(
        &pe,
        &["ip", "route", "add", "10.231.1.0/24", "via", "10.231.201.1"],
    )
    .unwrap();
    assert!(in_ns(
        &pe,
        &[
            "timeout",
            "3",
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{ip_a}/")
        ]
    )
    .is_err());

    // The rules are where inspect --kernel will look.
    let rules = host
        .firewall()
        .container_rules(&net, "ctr-a")
        .await
        .unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");

    // Detach a: its rules, veth and leases go; publishing stops answering.
    host.detach(&net, "ctr-a").await.expect("detach a");
    assert!(host
        .firewall()
        .container_rules(&net, "ctr-a")
        .await
        .unwrap()
        .is_empty());
    assert!(host
        .netlink()
        .link_index(&a.host_veth)
        .await
        .unwrap()
        .is_none());
    assert!(
        in_ns(&pa, &["ip", "link", "show", "eth0"]).is_err(),
        "peer went with the host end"
    );
    assert!(wget("http://127.0.0.1:18081/").is_err());
    assert!(!host
        .store()
        .unwrap()
        .leases(&net.id)
        .unwrap()
        .iter()
        .any(|l| l.owner == "ctr-a"));
    // Detach is idempotent.
    host.detach(&net, "ctr-a").await.expect("detach again");

    // network rm refuses while b is attached, in docker's words.
    let e = host.remove_network(&net).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "error while removing network: network pubnet id {} has active endpoints",
            net.id
        )
    );
    host.detach(&net, "ctr-b").await.unwrap();
    host.remove_network(&net).await.expect("remove network");
    assert!(host
        .netlink()
        .link_index(&net.bridge)
        .await
        .unwrap()
        .is_none());
    host.firewall().delete_table().await.unwrap();
    assert!(!nft_table_exists(&fx.ctx.table));
}

#[tokio::test]
async fn udp_publish_and_ipv6_between_containers() {
    if skip_unless_root() {
        return;
    }
    let mut fx = Fixture::new("udp6");
    let host = fx.host();
    let net = fx.network("dual", &["10.231.2.0/24", "fd00:231:2::/64"], false);
    host.create_network(&net).await.expect("create network");
    let (pa, fa) = fx.container("a");
    let (pb, fb) = fx.container("b");
    let published = ports(&["127.0.0.1:18091:53/udp"]);
    let a = host
        .attach(
            &net,
            &AttachRequest {
                ports: &published,
                ..attach_request("a", fa.as_fd())
            },
        )
        .await
        .expect("attach a");
    let b = host
        .attach(
            &net,
            &AttachRequest {
                ipv6: Some("fd00:231:2::99".parse().unwrap()),
                ..attach_request("b", fb.as_fd())
            },
        )
        .await
        .expect("attach b");
    assert_eq!(b.ipv6().unwrap().to_string(), "fd00:231:2::99");
    let a6 = a.ipv6().unwrap().to_string();
    assert_eq!(a6, "fd00:231:2::2");
    in_ns(&pb, &["busybox", "ping6", "-c", "1", "-W", "2", &a6]).expect("ping6 b -> a");
    let _ = pa;

    // A UDP echo server inside a, on a thread that entered a's netns.
    let fd = fa.try_clone().unwrap();
    let server = std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let s = std::net::UdpSocket::bind("0.0.0.0:53").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    c.send_to(b"ping-udp", "127.0.0.1:18091").unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = c.recv_from(&mut buf).expect("udp echo through DNAT");
    assert_eq!(&buf[..n], b"ping-udp");
    server.join().unwrap();

    host.detach(&net, "a").await.unwrap();
    host.detach(&net, "b").await.unwrap();
    host.remove_network(&net).await.unwrap();
    host.firewall().delete_table().await.unwrap();
}

/// After a failed attach: no veth, no lease, no ports, no rules, no eth0 in the netns.
async fn assert_nothing_left(
    fx: &Fixture,
    host: &vessel_network::Host,
    net: &vessel_network::Network,
    cid: &str,
    ns: &std::path::Path,
) {
    let veth = names::veth_name(&fx.ctx.link_prefix, cid, &net.id);
    assert!(
        host.netlink().link_index(&veth).await.unwrap().is_none(),
        "veth {veth} left"
    );
    assert!(
        !host
            .store()
            .unwrap()
            .leases(&net.id)
            .unwrap()
            .iter()
            .any(|l| l.owner == cid),
        "lease left"
    );
    assert!(
        host.firewall()
            .container_rules(net, cid)
            .await
            .unwrap()
            .is_empty(),
        "nft rules left"
    );
    assert!(
        in_ns(ns, &["ip", "link", "show", "eth0"]).is_err(),
        "eth0 left in netns"
    );
}

#[tokio::test]
async fn attach_rolls_back_at_every_step() {
    if skip_unless_root() {
        return;
    }
    let mut fx = Fixture::new("rb");
    let mut host = fx.host();
    let net = fx.network("rbnet", &["10.231.3.0/24"], false);
    host.create_network(&net).await.unwrap();
    let (p, f) = fx.container("c");
    let published = ports(&["18101:80"]);
    for fp in [
        FailPoint::AfterLease,
        FailPoint::AfterPorts,
        FailPoint::AfterVeth,
        FailPoint::AfterConfigure,
        FailPoint::AfterFirewall,
    ] {
        host.set_fail_point(Some(fp));
        let e = host
            .attach(
                &net,
                &AttachRequest {
                    ports: &published,
                    ..attach_request("c", f.as_fd())
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Injected(x) if x == fp), "{fp:?}: {e}");
        assert_nothing_left(&fx, &host, &net, "c", &p).await;
    }
    host.set_fail_point(None);
    // The same port is free again: every failed attempt released it.
    let a = host
        .attach(
            &net,
            &AttachRequest {
                ports: &published,
                ..attach_request("c", f.as_fd())
            },
        )
        .await
        .expect("attach after rollbacks");
    assert_eq!(a.ports[0].host_port, 18101);
    // Attaching the same container twice is refused before anything changes.
    let e = host
        .attach(
            &net,
            &AttachRequest {
                ifname: "eth1",
                default_route: false,
                ..attach_request("c", f.as_fd())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "endpoint with name c already exists in network rbnet"
    );
    host.detach(&net, "c").await.unwrap();
    host.remove_network(&net).await.unwrap();
    host.firewall().delete_table().await.unwrap();
}

#[tokio::test]
async fn attach_rolls_back_on_real_failures() {
    if skip_unless_root() {
        return;
    }
    let mut fx = Fixture::new("rf");
    let host = fx.host();
    let net = fx.network("rfnet", &["10.231.4.0/24"], false);
    host.create_network(&net).await.unwrap();
    let (_pa, fa) = fx.container("a");
    let (pb, fb) = fx.container("b");
    let (pc, fc) = fx.container("c");
    let want: IpAddr = "10.231.4.50".parse().unwrap();
    let a = host
        .attach(
            &net,
            &AttachRequest {
                ipv4: Some("10.231.4.50".parse().unwrap()),
                ports: &ports(&["18111:80"]),
                ..attach_request("a", fa.as_fd())
            },
        )
        .await
        .unwrap();
    assert_eq!(a.ipv4(), Some(want));

    // Requested address taken.
    let e = host
        .attach(
            &net,
            &AttachRequest {
                ipv4: Some("10.231.4.50".parse().unwrap()),
                ..attach_request("b", fb.as_fd())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "Address already in use");
    assert_nothing_left(&fx, &host, &net, "b", &pb).await;

    // Host port already published by a: refused after the lease, which is given back.
    let e = host
        .attach(
            &net,
            &AttachRequest {
                ports: &ports(&["127.0.0.1:18111:80"]),
                ..attach_request("b", fb.as_fd())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Bind for 127.0.0.1:18111 failed: port is already allocated"
    );
    assert_nothing_left(&fx, &host, &net, "b", &pb).await;

    // Interface name clash inside the container: the veth request fails as a whole.
    // (This kernel has no dummy driver: a veth pair makes the clashing eth0.)
    in_ns(
        &pc,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    )
    .unwrap();
    let e = host
        .attach(
            &net,
            &AttachRequest {
                ports: &ports(&["18112:80"]),
                ..attach_request("c", fc.as_fd())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.errno(), Some(17), "{e}");
    let veth = names::veth_name(&fx.ctx.link_prefix, "c", &net.id);
    assert!(host.netlink().link_index(&veth).await.unwrap().is_none());
    assert!(!host
        .store()
        .unwrap()
        .leases(&net.id)
        .unwrap()
        .iter()
        .any(|l| l.owner == "c"));
    assert!(host
        .firewall()
        .container_rules(&net, "c")
        .await
        .unwrap()
        .is_empty());
    // The port it wanted is free again.
    host.store()
        .unwrap()
        .reserve_ports(&net.id, "probe", &ports(&["18112:80"]), (1, 1))
        .expect("port released");
    host.store()
        .unwrap()
        .release_owner(&net.id, "probe")
        .unwrap();

    // Bad input is refused before anything happens.
    let e = host
        .attach(
            &net,
            &AttachRequest {
                ifname: "bad/name",
                ..attach_request("b", fb.as_fd())
            },
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with("invalid interface name bad/name"),
        "{e}"
    );
    let e = host
        .attach(
            &net,
            &AttachRequest {
                ipv4: Some("10.9.9.9".parse().unwrap()),
                ..attach_request("b", fb.as_fd())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Invalid address 10.9.9.9: It does not belong to any of this network's subnets"
    );
    assert_nothing_left(&fx, &host, &net, "b", &pb).await;

    host.detach(&net, "a").await.unwrap();
    host.remove_network(&net).await.unwrap();
    host.firewall().delete_table().await.unwrap();
}

#[tokio::test]
async fn create_network_rolls_back_and_internal_has_no_way_out() {
    if skip_unless_root() {
        return;
    }
    let mut fx = Fixture::new("cn");
    let mut host = fx.host();
    let net = fx.network("cnnet", &["10.231.5.0/24"], false);
    host.set_fail_point(Some(FailPoint::AfterBridge));
    let e = host.create_network(&net).await.unwrap_err();
    assert!(matches!(e, Error::Injected(FailPoint::AfterBridge)));
    assert!(
        host.netlink()
            .link_index(&net.bridge)
            .await
            .unwrap()
            .is_none(),
        "bridge left"
    );
    assert!(host.store().unwrap().leases(&net.id).unwrap().is_empty());
    host.set_fail_point(None);

    // A bridge-name clash with a device that is not a bridge: refused, device untouched.
    let dummy = net.bridge.clone();
    let dummy_peer = format!("{}z", fx.ctx.link_prefix);
    assert!(Command::new("ip")
        .args([
            "link",
            "add",
            &dummy,
            "type",
            "veth",
            "peer",
            "name",
            &dummy_peer
        ])
        .status()
        .unwrap()
        .success());
    let e = host.create_network(&net).await.unwrap_err();
    assert!(e.to_string().contains("exists and is not a bridge"), "{e}");
    assert!(host.netlink().link_index(&dummy).await.unwrap().is_some());
    host.netlink().delete_link(&dummy).await.unwrap();

    // --internal: containers talk to each other and to nothing else.
    let inet = fx.network("internal", &["10.231.6.0/24"], true);
    host.create_network(&inet).await.unwrap();
    // Idempotent: a second create (restore after reboot) is fine.
    host.create_network(&inet).await.unwrap();
    let (pa, fa) = fx.container("a");
    let (pb, fb) = fx.container("b");
    let a = host
        .attach(&inet, &attach_request("a", fa.as_fd()))
        .await
        .unwrap();
    host.attach(&inet, &attach_request("b", fb.as_fd()))
        .await
        .unwrap();
    assert!(
        in_ns(&pa, &["ip", "route", "show", "default"])
            .unwrap()
            .trim()
            .is_empty(),
        "internal: no default route"
    );
    in_ns(
        &pb,
        &[
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &a.ipv4().unwrap().to_string(),
        ],
    )
    .expect("internal peers talk");
    for c in ["a", "b"] {
        host.detach(&inet, c).await.unwrap();
    }
    host.remove_network(&inet).await.unwrap();
    host.firewall().delete_table().await.unwrap();
    assert!(links_with_prefix(&fx.ctx.link_prefix).is_empty());
}

#[test]
fn netns_create_and_remove() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new("ns");
    let name = format!("{}-x", fx.ctx.table);
    let p = vessel_network::netns::create_netns(&fx.ctx.runroot, &name).unwrap();
    // A second one of the same name is refused and the first is untouched.
    assert!(vessel_network::netns::create_netns(&fx.ctx.runroot, &name).is_err());
    let out = in_ns(&p, &["ip", "-o", "link"]).unwrap();
    assert_eq!(out.lines().count(), 1, "only lo: {out}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(&name));
    vessel_network::netns::remove_netns(&p).unwrap();
    assert!(!p.exists());
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&name));
    vessel_network::netns::remove_netns(&p).unwrap();
}

/// A request with the defaults of a container's first network: eth0, addresses from IPAM,
/// no published ports, the default route.
fn attach_request<'a>(
    container_id: &'a str,
    netns: std::os::fd::BorrowedFd<'a>,
) -> AttachRequest<'a> {
    AttachRequest {
        container_id,
        netns,
        ifname: "eth0",
        ipv4: None,
        ipv6: None,
        ports: &[],
        default_route: true,
    }
}
