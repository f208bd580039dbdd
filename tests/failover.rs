//! Templates shared through Redis between two real `ipfixsvc serve` nodes: an exporter that moves
//! from node A to node B is decoded at once without re-sending templates; a withdrawal on A keeps
//! B from decoding with the old template; a Redis outage costs no collection, and the store
//! catches up when Redis is back; a Redis that restarts empty gets the templates again.

mod common;

use common::redis_server::RedisServer;
use common::{BIN, Server, eventually};
use ipfixsvc::wire::{
    Decoder, DecoderOptions, FieldSpec, FieldValue, MessageBuilder, Plan, Registry, Template,
    TemplateKind, VARLEN,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn templates() -> [Template; 2] {
    [
        Template::data(
            256,
            vec![
                FieldSpec::new(8, 0, 4),
                FieldSpec::new(7, 0, 2),
                FieldSpec::new(1, 0, 8),
            ],
        ),
        Template::data(
            257,
            vec![FieldSpec::new(96, 0, VARLEN), FieldSpec::new(2, 0, 8)],
        ),
    ]
}

/// Messages of one exporter's domain: optionally the templates first, then `n` messages with
/// three records of each template.
fn messages(domain: u32, with_templates: bool, n: u64, first: u64) -> Vec<u8> {
    let reg = Registry::builtin();
    let [a, b] = templates();
    let (pa, pb) = (
        Plan::compile(a.clone(), &reg),
        Plan::compile(b.clone(), &reg),
    );
    let mut m = MessageBuilder::new(domain, 1400);
    if with_templates {
        m.add_template(&a).expect("fits");
        m.add_template(&b).expect("fits");
        m.flush();
    }
    for i in first..first + n {
        for j in 0..3 {
            m.add_record(
                &pa,
                &[
                    FieldValue::Ipv4([10, 0, 0, j as u8].into()),
                    FieldValue::Unsigned(i % 65536),
                    FieldValue::Unsigned(i * 10),
                ],
            )
            .expect("encodes");
            m.add_record(
                &pb,
                &[
                    FieldValue::Bytes(format!("app{i}").into_bytes()),
                    FieldValue::Unsigned(j),
                ],
            )
            .expect("encodes");
        }
        m.flush();
    }
    m.take_ready().concat()
}

fn withdrawal(domain: u32, id: u16) -> Vec<u8> {
    let mut m = MessageBuilder::new(domain, 1400);
    m.add_withdrawal(TemplateKind::Data, id).expect("fits");
    m.flush();
    m.take_ready().concat()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn send(file: &Path, server: &Server) {
    let out = Command::new(BIN)
        .arg("send")
        .arg(file)
        .arg("--to")
        .arg(server.tcp.to_string())
        .output()
        .expect("send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn redis_has(redis: &RedisServer, key: &str) -> bool {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "EXISTS", key])
        .output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
}

/// Records in `bytes` for a decoder that first saw `with` (its templates).
fn records_in(bytes: &[u8], with: &[u8]) -> usize {
    let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default());
    let mut count = |b: &[u8]| -> usize {
        ipfixsvc::wire::MessageReader::new(b, 65535)
            .map(|m| {
                d.decode(m.expect("frames").1)
                    .expect("decodes")
                    .data_records()
            })
            .sum()
    };
    count(with);
    count(bytes)
}

#[test]
fn exporter_moves_between_nodes_sharing_redis() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let env = |name: &'static str| {
        vec![
            ("IPFIXSVC__REDIS__URL", url.clone()),
            ("IPFIXSVC__NODE__NAME", name.to_string()),
        ]
    };
    let to_pairs = |v: &Vec<(&'static str, String)>| {
        v.iter().map(|(k, x)| (*k, x.clone())).collect::<Vec<_>>()
    };
    let env_a = to_pairs(&env("node-a"));
    let env_b = to_pairs(&env("node-b"));
    let a = Server::start(
        "node-a",
        &env_a
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    );
    let b = Server::start(
        "node-b",
        &env_b
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    );
    let dir = a.out.parent().expect("dir").to_path_buf();

    // 1. Templates and data to A.
    let first = messages(7, true, 20, 0);
    send(&write(&dir, "first.ipfix", &first), &a);
    a.wait_log("exporter session ended", 1, Duration::from_secs(20));
    eventually(
        "templates written through to Redis",
        Duration::from_secs(10),
        || {
            redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:7:256")
                && redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:7:257")
        },
    );
    // The stream writes what the session handed it within its flush delay (20 ms).
    eventually("A wrote every record", Duration::from_secs(10), || {
        a.output().len() == 20 * 6
    });

    // 2. The exporter reconnects to B and sends data only: B decodes every record at once.
    let moved = messages(7, false, 30, 20);
    let want = records_in(&moved, &first);
    assert_eq!(want, 30 * 6);
    send(&write(&dir, "moved.ipfix", &moved), &b);
    b.wait_log("exporter session ended", 1, Duration::from_secs(20));
    eventually(
        "B decoded the moved exporter's records",
        Duration::from_secs(10),
        || b.output().len() == want,
    );
    let line: serde_json::Value = serde_json::from_str(&b.output()[0]).expect("JSON");
    assert!(
        line.get("sourceIPv4Address").is_some() || line.get("applicationName").is_some(),
        "{line}"
    );

    // 3. A withdrawal on A: B must not decode template 256 with the old definition.
    let mut w = messages(7, true, 0, 0);
    w.extend(withdrawal(7, 256));
    send(&write(&dir, "withdraw.ipfix", &w), &a);
    a.wait_log("exporter session ended", 2, Duration::from_secs(20));
    eventually(
        "the withdrawal reached Redis",
        Duration::from_secs(10),
        || !redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:7:256"),
    );
    std::thread::sleep(Duration::from_millis(300)); // the invalidation travels by pub/sub
    let before = b.output().len();
    send(
        &write(&dir, "after-withdrawal.ipfix", &messages(7, false, 5, 100)),
        &b,
    );
    b.wait_log("exporter session ended", 2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<serde_json::Value> = b.output()[before..]
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(
        after.iter().all(|r| r["@template"] == 257),
        "template 256 was withdrawn: {after:?}"
    );
    assert_eq!(after.len(), 5 * 3, "template 257 still decodes");

    // 3b. Withdrawing all data templates on A (template id = set id 2) reaches B too.
    send(&write(&dir, "withdraw-all.ipfix", &withdrawal(7, 2)), &a);
    a.wait_log("exporter session ended", 3, Duration::from_secs(20));
    eventually(
        "the withdrawal of all reached Redis",
        Duration::from_secs(10),
        || !redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:7:257"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = b.output().len();
    send(
        &write(
            &dir,
            "after-withdraw-all.ipfix",
            &messages(7, false, 5, 200),
        ),
        &b,
    );
    b.wait_log("exporter session ended", 3, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.output().len(),
        before,
        "no template of domain 7 is left anywhere"
    );

    // 4. Redis down: A keeps collecting; Redis back: what A learned meanwhile reaches the store.
    redis.kill();
    let outage = messages(8, true, 10, 0);
    let before_a = a.output().len();
    send(&write(&dir, "outage.ipfix", &outage), &a);
    a.wait_log("exporter session ended", 4, Duration::from_secs(20));
    eventually(
        "A decoded during the outage",
        Duration::from_secs(10),
        || a.output().len() == before_a + 60,
    );
    assert_eq!(
        a.wait_log("template store unavailable", 1, Duration::from_secs(10))
            .len(),
        1,
        "one clear line"
    );
    redis.restart();
    eventually(
        "A re-synced its templates after the outage",
        Duration::from_secs(20),
        || redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:8:256"),
    );
    let before_b = b.output().len();
    send(
        &write(&dir, "after-outage.ipfix", &messages(8, false, 4, 10)),
        &b,
    );
    eventually(
        "B decoded with the re-synced templates",
        Duration::from_secs(20),
        || b.output().len() == before_b + 24,
    );

    assert_eq!(
        a.log_lines("template store unavailable").len(),
        1,
        "one line per outage, not a flood"
    );
    assert_eq!(a.log_lines("template store back").len(), 1);

    // 5. Redis restarts empty while A is healthy and quiet (no persistence, or a failover to a
    // replica without the last writes): A notices the new instance and writes again what its
    // sessions defined, which its TCP exporters will not send again.
    redis.restart();
    eventually(
        "A wrote its templates to the new Redis instance",
        Duration::from_secs(20),
        || redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:8:256"),
    );
    // One line per new instance: step 4's restart was one too.
    assert_eq!(a.log_lines("template store restarted").len(), 2);
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// An exporter that moves to a node with a burst of data (a reconnecting exporter catches up on
/// what it held back) gets every record decoded: the session stops reading while its template
/// comes from Redis (TCP backpressure), instead of dropping what overflows the parking space.
#[test]
fn a_burst_waiting_for_its_template_from_redis_is_decoded_not_dropped() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Server::start(
        "burst-a",
        &[
            ("IPFIXSVC__REDIS__URL", &url),
            ("IPFIXSVC__NODE__NAME", "burst-a"),
        ],
    );
    let b = Server::start(
        "burst-b",
        &[
            ("IPFIXSVC__REDIS__URL", &url),
            ("IPFIXSVC__NODE__NAME", "burst-b"),
        ],
    );
    let dir = a.out.parent().expect("dir").to_path_buf();
    let first = messages(5, true, 5, 0);
    send(&write(&dir, "burst-first.ipfix", &first), &a);
    eventually("templates in Redis", Duration::from_secs(10), || {
        redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:5:256")
            && redis_has(&redis, "ipfix:tpl:default:tcp:127.0.0.1:0:5:257")
    });
    // About 1.2 MB of data only: several times collector.pending_bytes (256 KiB).
    let burst = messages(5, false, 6000, 5);
    let want = records_in(&burst, &first);
    send(&write(&dir, "burst.ipfix", &burst), &b);
    let ended = b.wait_log("exporter session ended", 1, Duration::from_secs(30));
    assert!(
        ended
            .iter()
            .all(|l| l.contains("dropped_sets_buffer_full=0")),
        "{ended:?}"
    );
    eventually("every record of the burst", Duration::from_secs(20), || {
        b.output().len() == want
    });
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
