//! The collector against hostile senders, as a real `ipfixsvc serve` process on loopback: template
//! bombs (huge templates, endless templates, over TCP and UDP, from many addresses) stay within
//! the configured byte budgets while a good exporter is collected in full, and a flood of forged
//! UDP sources cannot lock another exporter out.

mod common;

use common::{Server, eventually};
use ipfixsvc::wire::{FieldSpec, FieldValue, MessageBuilder, Plan, Registry, Template};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The good exporter's template and `n` messages of `per` records each (record i carries i).
fn good_messages(domain: u32, n: usize, per: usize) -> Vec<Vec<u8>> {
    let t = Template::data(300, vec![FieldSpec::new(8, 0, 4), FieldSpec::new(2, 0, 8)]);
    let plan = Plan::compile(t.clone(), &Registry::builtin());
    let mut b = MessageBuilder::new(domain, 1400);
    b.add_template(&t).expect("template fits");
    b.flush();
    let mut out = b.take_ready();
    for m in 0..n {
        for r in 0..per {
            let i = (m * per + r) as u64;
            b.add_record(
                &plan,
                &[
                    FieldValue::Ipv4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
                    FieldValue::Unsigned(i),
                ],
            )
            .expect("record");
        }
        b.flush();
        out.extend(b.take_ready());
    }
    out
}

/// Messages of templates with `fields` one-byte fields each, ids from `first`, as many per
/// message as fit.
fn template_bomb(domain: u32, first: u16, count: u16, fields: usize) -> Vec<Vec<u8>> {
    let mut b = MessageBuilder::new(domain, 65_535);
    for id in first..first + count {
        let specs = (0..fields)
            .map(|k| FieldSpec::new(1000 + (k % 30_000) as u16, 0, 1))
            .collect();
        b.add_template(&Template::data(id, specs))
            .expect("template fits a message");
    }
    b.flush();
    b.take_ready()
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(source, 0)).expect("bind source");
    s.connect(to).await.expect("connect")
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn records_from(server: &Server, source: &str) -> usize {
    let needle = format!("\"@exporter\":\"{source}:");
    server
        .output()
        .iter()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Sends messages until the collector closes the connection (or all are sent); how many went.
async fn send_until_closed(mut s: tokio::net::TcpStream, messages: &[Vec<u8>]) -> usize {
    let mut sent = 0;
    for m in messages {
        if s.write_all(m).await.is_err() {
            break;
        }
        sent += 1;
        // A collector never writes: a readable socket means it closed.
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(5), s.read(&mut probe)).await
        {
            break;
        }
    }
    sent
}

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_bombs_stay_within_their_byte_budgets_and_a_good_exporter_is_collected_in_full() {
    let total = 48 * MIB;
    let server = Server::start(
        "template-bomb",
        &[
            (
                "IPFIXSVC__COLLECTOR__TEMPLATE_BYTES_PER_SESSION",
                &(2 * MIB).to_string(),
            ),
            (
                "IPFIXSVC__COLLECTOR__TEMPLATE_BYTES_PER_EXPORTER",
                &(8 * MIB).to_string(),
            ),
            (
                "IPFIXSVC__COLLECTOR__TEMPLATE_BYTES_TOTAL",
                &total.to_string(),
            ),
        ],
    );
    let pid = server.child.id();
    let good_ip: IpAddr = "127.0.0.9".parse().expect("ip");
    let good = good_messages(7, 200, 20);
    let mut g = connect_from(good_ip, server.tcp).await;
    // The template and the first half before the bomb, the rest during and after it.
    for m in &good[..100] {
        g.write_all(m).await.expect("good exporter");
    }
    eventually(
        "the good exporter's first records",
        Duration::from_secs(20),
        || records_from(&server, "127.0.0.9") > 0,
    );
    let before = rss_kib(pid, "VmRSS:");

    // Twelve addresses, eight connections each, each sending 512-field templates until
    // refused: 1.2 GB of compiled templates if nothing stopped them.
    let mut attackers = Vec::new();
    for a in 2..14u8 {
        for c in 0..8u16 {
            let tcp = server.tcp;
            attackers.push(tokio::spawn(async move {
                let ip = IpAddr::from([127, 0, 0, a]);
                let s = connect_from(ip, tcp).await;
                send_until_closed(s, &template_bomb(1, 256 + c, 200, 512)).await
            }));
        }
    }
    // Templates far past the field limit (the format allows 16,377 one-byte fields).
    for a in 14..16u8 {
        let s = connect_from(IpAddr::from([127, 0, 0, a]), server.tcp).await;
        assert!(send_until_closed(s, &template_bomb(1, 256, 1, 16_000)).await <= 1);
    }
    // UDP: datagrams full of templates, each to a new Observation Domain (a new session).
    let udp = std::net::UdpSocket::bind("127.0.0.16:0").expect("udp");
    for domain in 0..300u32 {
        for m in template_bomb(domain, 256, 31, 512) {
            let _ = udp.send_to(&m, server.udp);
        }
        if domain % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut sent_by_attackers = 0;
    for a in attackers {
        sent_by_attackers += a.await.expect("attacker");
    }
    for m in &good[100..] {
        g.write_all(m).await.expect("good exporter, after the bomb");
    }
    drop(g);
    eventually("every good record", Duration::from_secs(30), || {
        records_from(&server, "127.0.0.9") == 200 * 20
    });
    let peak = rss_kib(pid, "VmHWM:");
    let grown = peak.saturating_sub(before) as usize * 1024;
    let refused = server.log_lines("refused").len();
    assert!(refused > 0, "templates were refused at a budget");
    // The budget counts compiled templates; decoding buffers, allocator slack and the log add
    // to it. Unbounded, this bomb takes gigabytes.
    assert!(
        grown < total + 40 * MIB,
        "RSS grew {} MiB (peak {} MiB) for a {} MiB template budget; {sent_by_attackers} bomb messages sent",
        grown / MIB,
        peak / 1024,
        total / MIB
    );
    eprintln!(
        "template bomb: {sent_by_attackers} TCP messages taken before refusal, RSS grew {} MiB (budget {} MiB)",
        grown / MIB,
        total / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_udp_flood_does_not_lock_out_another_exporter() {
    let server = Server::start(
        "udp-flood",
        &[
            ("IPFIXSVC__COLLECTOR__MAX_UDP_SESSIONS", "64"),
            ("IPFIXSVC__COLLECTOR__MAX_SESSIONS_PER_EXPORTER", "16"),
        ],
    );
    let hello = template_bomb(1, 256, 1, 4).remove(0);
    // One address, 500 source ports; then 40 addresses of two ports each: more sessions than
    // the table holds, all quiet after their one datagram.
    let mut sockets = Vec::new();
    for _ in 0..500 {
        sockets.push(std::net::UdpSocket::bind("127.0.0.2:0").expect("bind"));
    }
    for a in 30..70u8 {
        for _ in 0..2 {
            sockets
                .push(std::net::UdpSocket::bind((IpAddr::from([127, 0, 0, a]), 0)).expect("bind"));
        }
    }
    for (i, s) in sockets.iter().enumerate() {
        s.send_to(&hello, server.udp).expect("send");
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    server.wait_log("UDP session table full", 1, Duration::from_secs(10));
    // Now an exporter the table has never seen.
    let good = std::net::UdpSocket::bind("127.0.0.9:0").expect("bind");
    for m in good_messages(3, 50, 20) {
        good.send_to(&m, server.udp).expect("send");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eventually(
        "every record of the new exporter",
        Duration::from_secs(20),
        || records_from(&server, "127.0.0.9") == 50 * 20,
    );
    assert!(
        !server.log_lines("UDP session table full").is_empty(),
        "the flood filled the table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_a_valid_message_is_closed_at_the_first_message_deadline() {
    let server = Server::start(
        "first-message",
        &[("IPFIXSVC__COLLECTOR__FIRST_MESSAGE_SECS", "1")],
    );
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.tcp)
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed long before the 600 s idle timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "the collector closed it");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A good exporter's session outlives the deadline.
    let mut good = tokio::net::TcpStream::connect(server.tcp)
        .await
        .expect("connect");
    for m in good_messages(1, 3, 5) {
        good.write_all(&m).await.expect("write");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    good.write_all(&good_messages(1, 1, 5)[1])
        .await
        .expect("still open");
    eventually("the good records", Duration::from_secs(10), || {
        records_from(&server, "127.0.0.1") == 20
    });
}

/// A message defining template 300 in `domain` as two ports: another layout than the good one.
fn other_layout(domain: u32) -> Vec<u8> {
    let t = Template::data(300, vec![FieldSpec::new(7, 0, 2), FieldSpec::new(11, 0, 2)]);
    let mut b = MessageBuilder::new(domain, 1400);
    b.add_template(&t).expect("fits");
    b.flush();
    b.take_ready().remove(0)
}

/// The packetDeltaCount values of the records `source` sent, in output order.
fn counts_from(server: &Server, source: &str) -> Vec<u64> {
    let needle = format!("\"@exporter\":\"{source}:");
    server
        .output()
        .iter()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v.get("packetDeltaCount")?.as_u64()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_datagram_cannot_poison_the_templates_of_a_tcp_exporter() {
    let server = Server::start("poison", &[]);
    let msgs = good_messages(60, 3, 5);
    // TCP connection A defines 300 in domain 60, sends data, and closes.
    let mut a = connect_from("127.0.0.3".parse().expect("ip"), server.tcp).await;
    for m in &msgs[..2] {
        a.write_all(m).await.expect("a");
    }
    drop(a);
    eventually("A's records", Duration::from_secs(10), || {
        counts_from(&server, "127.0.0.3").len() == 5
    });
    // One datagram from the same address redefines 300 in domain 60.
    let udp = std::net::UdpSocket::bind("127.0.0.3:0").expect("bind");
    udp.send_to(&other_layout(60), server.udp).expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // TCP connection B sends data only: decoded with A's template, never the UDP one.
    let mut b = connect_from("127.0.0.3".parse().expect("ip"), server.tcp).await;
    b.write_all(&msgs[2]).await.expect("b");
    drop(b);
    eventually(
        "B's records, with A's layout",
        Duration::from_secs(10),
        || counts_from(&server, "127.0.0.3").len() == 10,
    );
    assert_eq!(
        counts_from(&server, "127.0.0.3")[5..],
        [5, 6, 7, 8, 9],
        "B's data decoded with the TCP template"
    );
    let ports = server
        .output()
        .iter()
        .filter(|l| l.contains("\"sourceTransportPort\""))
        .count();
    assert_eq!(ports, 0, "nothing was decoded with the UDP layout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_sessions_defining_one_key_differently_are_a_conflict_and_not_shared() {
    let server = Server::start("conflict", &[]);
    let ip: IpAddr = "127.0.0.4".parse().expect("ip");
    let good = good_messages(61, 2, 5);
    // Two exporters behind one address (a NAT), both live, one template id, two layouts.
    let mut a = connect_from(ip, server.tcp).await;
    a.write_all(&good[0]).await.expect("a");
    a.write_all(&good[1]).await.expect("a");
    eventually("A's records", Duration::from_secs(10), || {
        counts_from(&server, "127.0.0.4").len() == 5
    });
    let mut b = connect_from(ip, server.tcp).await;
    b.write_all(&other_layout(61)).await.expect("b");
    server.wait_log(
        "define one shared template differently",
        1,
        Duration::from_secs(10),
    );
    // A third connection with data only gets neither definition.
    let mut c = connect_from(ip, server.tcp).await;
    c.write_all(&good[2]).await.expect("c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counts_from(&server, "127.0.0.4").len(),
        5,
        "C's data is held, not guessed"
    );
    drop(c);
    // B leaves: A's definition is shared again, and what C and later D hold is decoded with it.
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.write_all(&good[0]).await.expect("a again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut d = connect_from(ip, server.tcp).await;
    d.write_all(&good[2]).await.expect("d");
    drop(d);
    eventually(
        "C's and D's data decoded with A's template",
        Duration::from_secs(10),
        || counts_from(&server, "127.0.0.4").len() == 15,
    );
    let mut counts = counts_from(&server, "127.0.0.4");
    counts.sort();
    assert_eq!(counts[5..], [5, 5, 6, 6, 7, 7, 8, 8, 9, 9]);
    assert!(!server.log_lines("conflict over").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udp_template_lifetime_holds_when_templates_are_shared() {
    let server = Server::start(
        "udp-lifetime",
        &[("IPFIXSVC__COLLECTOR__UDP_TEMPLATE_LIFETIME_SECS", "2")],
    );
    let msgs = good_messages(62, 3, 5);
    let udp = std::net::UdpSocket::bind("127.0.0.5:0").expect("bind");
    for m in &msgs[..2] {
        udp.send_to(m, server.udp).expect("send");
    }
    eventually(
        "records while the template lives",
        Duration::from_secs(10),
        || counts_from(&server, "127.0.0.5").len() == 5,
    );
    // RFC 7011 8.4: not re-sent within its lifetime, the template is gone, for the session
    // and for the cache and store behind it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    udp.send_to(&msgs[2], server.udp).expect("send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        counts_from(&server, "127.0.0.5").len(),
        5,
        "data after the lifetime is not decoded with an expired template"
    );
    // Re-sent, it lives again.
    udp.send_to(&msgs[0], server.udp).expect("send");
    udp.send_to(&msgs[2], server.udp).expect("send");
    eventually(
        "records after the template came again",
        Duration::from_secs(10),
        || counts_from(&server, "127.0.0.5").len() >= 10,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_datagrams_and_forged_sources_does_not_flood_the_log() {
    let server = Server::start(
        "log-flood",
        &[
            ("IPFIXSVC__COLLECTOR__IDLE_TIMEOUT_SECS", "1"),
            ("IPFIXSVC__COLLECTOR__FIRST_MESSAGE_SECS", "1"),
        ],
    );
    // An IPFIX header whose set runs past the message: malformed, but routable.
    let mut bad = template_bomb(1, 256, 1, 4).remove(0);
    let at = 16 + 2; // the first set's length
    bad[at..at + 2].copy_from_slice(&0xfff0u16.to_be_bytes());
    let one = std::net::UdpSocket::bind("127.0.0.6:0").expect("bind");
    for _ in 0..2000 {
        let _ = one.send_to(&bad, server.udp);
    }
    // 1,000 sources, one template each, then silence: 1,000 sessions retire.
    let hello = template_bomb(1, 256, 1, 4).remove(0);
    for i in 0..1000 {
        let s = std::net::UdpSocket::bind("127.0.0.7:0").expect("bind");
        let _ = s.send_to(&hello, server.udp);
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Every session retires within about two seconds; under a loaded host, allow longer.
    server.wait_log("malformed", 1, Duration::from_secs(20));
    server.wait_log("ended", 1, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let malformed = server.log_lines("malformed").len();
    assert!(
        malformed > 0 && malformed < 20,
        "{malformed} lines for 2,000 bad datagrams"
    );
    // Each kind of line comes at powers of two of its count: at most 11 for 1,000. On a busy
    // host some sessions reach their first-message deadline with their datagram still queued:
    // those losses are a second series, also at powers of two.
    let quiet = server.log_lines("ended without a data record").len();
    let lost = server.log_lines("queued for an ended session").len();
    assert!(
        quiet > 0 && quiet <= 11 && lost <= 11,
        "{quiet} + {lost} lines for 1,000 retired sessions: {:?}",
        server.log_lines("ended")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_redefinition_without_withdrawal_is_logged_and_counted() {
    let server = Server::start("redefinition", &[]);
    let mut s = tokio::net::TcpStream::connect(server.tcp)
        .await
        .expect("connect");
    let good = good_messages(63, 1, 5);
    s.write_all(&good[0]).await.expect("template");
    s.write_all(&other_layout(63)).await.expect("redefinition");
    s.write_all(&other_layout(63))
        .await
        .expect("the same again: no news");
    drop(s);
    let lines = server.wait_log(
        "template redefined without a withdrawal",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(lines.len(), 1, "one line per session");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.log_lines("template redefined").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_udp_source_port_cannot_poison_a_udp_exporters_templates() {
    let server = Server::start(
        "udp-poison",
        &[("IPFIXSVC__COLLECTOR__IDLE_TIMEOUT_SECS", "1")],
    );
    let msgs = good_messages(64, 2, 5);
    let real = std::net::UdpSocket::bind("127.0.0.10:0").expect("bind");
    real.send_to(&msgs[0], server.udp).expect("template");
    real.send_to(&msgs[1], server.udp).expect("data");
    eventually(
        "the real exporter's records",
        Duration::from_secs(10),
        || counts_from(&server, "127.0.0.10").len() == 5,
    );
    // Its session retires; a forger on the same address, another port, redefines 300.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let forger = std::net::UdpSocket::bind("127.0.0.10:0").expect("bind");
    forger
        .send_to(&other_layout(64), server.udp)
        .expect("forged template");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The exporter's next datagram (data only) is decoded with its own template.
    real.send_to(&msgs[2], server.udp).expect("data");
    eventually(
        "decoded with the exporter's template",
        Duration::from_secs(10),
        || counts_from(&server, "127.0.0.10").len() == 10,
    );
    let ports = server
        .output()
        .iter()
        .filter(|l| l.contains("\"sourceTransportPort\""))
        .count();
    assert_eq!(ports, 0, "nothing decoded with the forged layout");
}
