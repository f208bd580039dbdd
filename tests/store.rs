//! The template store, in memory and in a real redis-server: the same behaviour from both,
//! bytes written by someone else fail safe, and a Redis outage fails fast and heals.

mod common;

use common::redis_server::RedisServer;
use ipfixsvc::store::{StoreError, StoredTemplate, TemplateKey, TemplateStore, Transport};
use ipfixsvc::wire::{FieldSpec, Template, TemplateKind, VARLEN};
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn key(id: u16) -> TemplateKey {
    TemplateKey {
        tenant: "default".into(),
        transport: Transport::Tcp,
        port: 0,
        exporter: "192.0.2.7".parse::<IpAddr>().expect("address"),
        domain: 42,
        template_id: id,
    }
}

/// The scope (tenant, transport, exporter, domain) of a listing or an All Templates Withdrawal.
fn scope(tenant: &str, domain: u32) -> TemplateKey {
    TemplateKey {
        tenant: tenant.into(),
        domain,
        ..key(0)
    }
}

fn value(id: u16, kind: TemplateKind) -> StoredTemplate {
    let fields = vec![FieldSpec::new(8, 0, 4), FieldSpec::new(14, 6871, VARLEN)];
    let template = match kind {
        TemplateKind::Data => Template::data(id, fields),
        TemplateKind::Options => Template::options(id, 1, fields),
    };
    StoredTemplate {
        template,
        first_seen: 1_764_000_000,
        node: "node-a".into(),
    }
}

async fn behaves(store: &TemplateStore) {
    assert_eq!(store.get(&key(256)).await.expect("get"), None);
    store
        .put(&key(256), &value(256, TemplateKind::Data))
        .await
        .expect("put");
    store
        .put(&key(257), &value(257, TemplateKind::Data))
        .await
        .expect("put");
    store
        .put(&key(300), &value(300, TemplateKind::Options))
        .await
        .expect("put");
    assert_eq!(
        store.get(&key(256)).await.expect("get"),
        Some(value(256, TemplateKind::Data))
    );
    let listed: Vec<u16> = store
        .list(&scope("default", 42))
        .await
        .expect("list")
        .iter()
        .map(|(k, _)| k.template_id)
        .collect();
    assert_eq!(listed, vec![256, 257, 300]);
    assert!(
        store
            .list(&scope("other-tenant", 42))
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list(&scope("default", 43))
            .await
            .expect("list")
            .is_empty()
    );
    // What UDP taught is not TCP's: same exporter, domain and id, another key.
    let udp = TemplateKey {
        transport: Transport::Udp,
        ..key(256)
    };
    assert_eq!(store.get(&udp).await.expect("get"), None);
    store
        .put(&udp, &value(256, TemplateKind::Options))
        .await
        .expect("put");
    assert_eq!(
        store.get(&key(256)).await.expect("get"),
        Some(value(256, TemplateKind::Data)),
        "a UDP definition leaves the TCP one alone"
    );
    assert_eq!(store.list(&udp).await.expect("list").len(), 1);
    store.remove(&key(257)).await.expect("withdraw one");
    assert_eq!(store.get(&key(257)).await.expect("get"), None);
    assert_eq!(
        store
            .remove_all(&scope("default", 42), TemplateKind::Data)
            .await
            .expect("withdraw all"),
        1
    );
    let left: Vec<u16> = store
        .list(&scope("default", 42))
        .await
        .expect("list")
        .iter()
        .map(|(k, _)| k.template_id)
        .collect();
    assert_eq!(
        left,
        vec![300],
        "withdrawing all data templates keeps the options template"
    );
}

/// Many definitions in one round trip: each written unless the key changed later, as one by one.
async fn batched_writes_follow_the_same_rule(store: &TemplateStore) {
    let now = ipfixsvc::store::unix_ms();
    let later = TemplateKey {
        template_id: 700,
        ..key(0)
    };
    assert!(
        store
            .put_if_newer(&later, &value(700, TemplateKind::Options), now + 60_000)
            .await
            .expect("put")
    );
    let writes: Vec<_> = (700..710u16)
        .map(|id| {
            let k = TemplateKey {
                template_id: id,
                ..key(0)
            };
            (k, value(id, TemplateKind::Data), now, id % 2 == 0)
        })
        .collect();
    let wrote = store
        .put_many_if_newer(&writes, "node-a")
        .await
        .expect("batch");
    assert_eq!(wrote.len(), 10);
    assert!(!wrote[0], "700 changed later elsewhere: not overwritten");
    assert!(wrote[1..].iter().all(|w| *w));
    assert_eq!(
        store.get(&later).await.expect("get"),
        Some(value(700, TemplateKind::Options))
    );
    for id in 701..710u16 {
        let k = TemplateKey {
            template_id: id,
            ..key(0)
        };
        assert_eq!(
            store.get(&k).await.expect("get"),
            Some(value(id, TemplateKind::Data))
        );
    }
}

/// A node cut off from Redis re-syncs what it learned meanwhile; a later change by another node
/// wins, whichever order the writes reach the store in.
async fn late_resync_loses_to_a_later_change(store: &TemplateStore) {
    let (k, now) = (key(500), ipfixsvc::store::unix_ms());
    let (old, new) = (
        value(500, TemplateKind::Data),
        value(500, TemplateKind::Options),
    );
    // Node B redefines at `now`; node A's definition from 10 s earlier arrives afterwards.
    assert!(store.put_if_newer(&k, &new, now).await.expect("put"));
    assert!(
        !store
            .put_if_newer(&k, &old, now - 10_000)
            .await
            .expect("put")
    );
    assert_eq!(store.get(&k).await.expect("get"), Some(new.clone()));
    // A withdrawal made before the redefinition does not remove it either.
    assert!(
        !store
            .remove_if_newer(&k, now - 5_000)
            .await
            .expect("remove")
    );
    assert!(store.get(&k).await.expect("get").is_some());
    // A later withdrawal does; then an earlier definition cannot bring it back.
    assert!(
        store
            .remove_if_newer(&k, now + 1_000)
            .await
            .expect("remove")
    );
    assert!(!store.put_if_newer(&k, &old, now + 500).await.expect("put"));
    assert_eq!(store.get(&k).await.expect("get"), None);
    let listed = store.list(&k).await.expect("list");
    assert!(
        listed.iter().all(|(lk, _)| lk.template_id != 500),
        "not listed"
    );
    // A definition after the withdrawal is a definition.
    assert!(
        store
            .put_if_newer(&k, &old, now + 2_000)
            .await
            .expect("put")
    );
    assert_eq!(store.get(&k).await.expect("get"), Some(old));
}

async fn expires(store: &TemplateStore) {
    store
        .put(&key(400), &value(400, TemplateKind::Data))
        .await
        .expect("put");
    assert!(store.get(&key(400)).await.expect("get").is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        store.get(&key(400)).await.expect("get"),
        None,
        "expired after its TTL"
    );
}

/// A tenant's listing: every exporter (IPv6 ones too), transport and domain of that tenant, none
/// of another's, in order, and cut at the bound it is given.
async fn lists_a_tenants_templates(store: &TemplateStore) {
    let v6 = TemplateKey {
        tenant: "acme".into(),
        transport: Transport::Udp,
        exporter: "2001:db8::7".parse().expect("v6"),
        port: 4739,
        domain: 3,
        template_id: 260,
    };
    let v4 = TemplateKey {
        tenant: "acme".into(),
        ..key(256)
    };
    for k in [&v6, &v4, &key(256), &scope("acme-two", 1)] {
        store
            .put(k, &value(k.template_id, TemplateKind::Data))
            .await
            .expect("put");
    }
    let (listed, more) = store.tenant("acme", 10).await.expect("tenant");
    let keys: Vec<&TemplateKey> = listed.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [&v4, &v6], "acme's only, sorted by scope");
    assert!(!more);
    assert_eq!(listed[1].1, value(260, TemplateKind::Data));
    let (cut, more) = store.tenant("acme", 1).await.expect("tenant");
    assert_eq!(cut.len(), 1);
    assert!(more, "a cut listing says so");
    let (none, _) = store.tenant("nobody", 10).await.expect("tenant");
    assert!(none.is_empty());
}

#[tokio::test]
async fn memory_and_redis_stores_behave_alike() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(2);
    let stores = [
        TemplateStore::memory(ttl),
        TemplateStore::redis(&redis.url(), ttl, Duration::from_millis(500)).expect("redis store"),
    ];
    for s in &stores {
        behaves(s).await;
        late_resync_loses_to_a_later_change(s).await;
        batched_writes_follow_the_same_rule(s).await;
        lists_a_tenants_templates(s).await;
    }
    for s in &stores {
        expires(s).await;
    }
}

#[tokio::test]
async fn bytes_from_another_version_fail_safe() {
    let redis = RedisServer::start();
    let store = TemplateStore::redis(
        &redis.url(),
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .expect("store");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let k = "ipfix:tpl:default:tcp:192.0.2.7:0:42:256";
    for (bytes, why) in [
        (vec![1u8, 0xff, 0xff, 0xff, 0xff, 0xff], "damaged"),
        (vec![9u8, 1, 2, 3], "a future format"),
        (vec![], "empty"),
    ] {
        redis::cmd("SET")
            .arg(k)
            .arg(bytes)
            .query_async::<()>(&mut conn)
            .await
            .expect("set");
        match store.get(&key(256)).await {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("{why}: expected a Corrupt error, got {other:?}"),
        }
    }
    // A good value written through the store reads back.
    store
        .put(&key(256), &value(256, TemplateKind::Data))
        .await
        .expect("put");
    assert_eq!(
        store.get(&key(256)).await.expect("get"),
        Some(value(256, TemplateKind::Data))
    );
}

#[tokio::test]
async fn redis_outage_fails_fast_and_heals() {
    let mut redis = RedisServer::start();
    let store = TemplateStore::redis(
        &redis.url(),
        Duration::from_secs(60),
        Duration::from_millis(300),
    )
    .expect("store");
    store
        .put(&key(256), &value(256, TemplateKind::Data))
        .await
        .expect("put while up");
    redis.kill();
    let t = Instant::now();
    let r = store.put(&key(257), &value(257, TemplateKind::Data)).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "failed in {:?}, not fast",
        t.elapsed()
    );
    redis.restart();
    // The connection manager reconnects on its own; the restarted server is empty.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.put(&key(258), &value(258, TemplateKind::Data)).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.get(&key(258)).await.expect("get"),
        Some(value(258, TemplateKind::Data))
    );
}

/// Tenants and tokens: the same answers from memory and from a real Redis; a revoked token is
/// refused at once, and only its hash is stored.
#[tokio::test]
async fn tenants_and_tokens_behave_alike_in_memory_and_redis() {
    use ipfixsvc::store::tenants::{Quotas, token_hash};
    use ipfixsvc::store::{Tenant, TenantStore};
    let redis = RedisServer::start();
    let stores = [
        TenantStore::memory(),
        TenantStore::redis(&redis.url(), Duration::from_millis(500)).expect("redis store"),
    ];
    for s in &stores {
        let t = |id: &str| Tenant {
            id: id.into(),
            name: id.to_uppercase(),
            exporters: vec!["10.1.0.0/16".into()],
            quotas: Quotas::default(),
            created_ms: 1,
        };
        assert!(s.create(&t("acme")).await.expect("create"));
        assert!(
            !s.create(&t("acme")).await.expect("again"),
            "ids are unique"
        );
        assert!(s.create(&t("globex")).await.expect("create"));
        let mut renamed = t("acme");
        renamed.name = "ACME Corp".into();
        assert!(s.update(&renamed).await.expect("update"));
        assert!(
            !s.update(&t("nobody")).await.expect("update"),
            "no such tenant"
        );
        assert_eq!(s.get("acme").await.expect("get"), Some(renamed));
        let ids: Vec<String> = s
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, vec!["acme", "globex"]);
        let (token, rec) = s.add_token("acme").await.expect("token");
        assert_eq!(rec.hash, token_hash(&token));
        assert_eq!(
            s.authenticate(&token).await.expect("auth"),
            Some(("acme".into(), rec.id.clone()))
        );
        assert_eq!(s.authenticate("ipfx_guess").await.expect("auth"), None);
        let listed = s.tokens("acme").await.expect("tokens");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, rec.id);
        assert!(s.last_used("acme").await.expect("used").is_empty());
        s.mark_used("acme", &rec.id, 1234).await.expect("mark");
        assert_eq!(
            s.last_used("acme").await.expect("used").get(&rec.id),
            Some(&1234)
        );
        assert!(s.revoke("acme", &rec.id).await.expect("revoke"));
        assert!(!s.revoke("acme", &rec.id).await.expect("again"));
        assert_eq!(s.authenticate(&token).await.expect("auth"), None, "revoked");
        assert!(
            s.last_used("acme").await.expect("used").is_empty(),
            "a revoked token's use goes with it"
        );
        let (other, _) = s.add_token("globex").await.expect("token");
        assert!(s.delete("globex").await.expect("delete"));
        assert_eq!(s.get("globex").await.expect("get"), None);
        assert_eq!(
            s.authenticate(&other).await.expect("auth"),
            None,
            "a deleted tenant's tokens go with it"
        );
    }
}

/// A live series kept in Redis (`store = "redis"`): written each second; while Redis is away the
/// writes fail (counted) and the cells wait; once it is back they are written again, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_series_wait_for_redis_and_are_written_again() {
    use ipfixsvc::actors::mediator::StreamStats;
    use ipfixsvc::actors::mediator::series_sink::SeriesSink;
    use ipfixsvc::analysis::live::LiveOptions;
    use ipfixsvc::mediation::{Records, Source};
    use ipfixsvc::store::series::{SeriesKey, SeriesStore, WRITER_STALE_MS};
    use ipfixsvc::wire::Registry;
    use ipfixsvc::wire::decoder::{Decoder, DecoderOptions};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let mut redis = RedisServer::start();
    let store =
        Arc::new(SeriesStore::redis(&redis.url(), Duration::from_millis(300)).expect("store"));
    let stats = Arc::new(StreamStats::default());
    let registry = Registry::builtin();
    let mut sink = SeriesSink::new(
        LiveOptions {
            interval_secs: 10,
            by: vec!["destinationTransportPort".into()],
            retention_secs: 3600,
            max_keys: 1000,
            forward_only: false,
        },
        registry.clone(),
        stats.clone(),
        Some((store.clone(), "acme/kept".into())),
    )
    .expect("sink");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let flows: Vec<(u64, u16, u64)> = (0..30u64)
        .map(|k| {
            (
                now - 60_000 + k * 2000,
                [80u16, 443][k as usize % 2],
                500 + k,
            )
        })
        .collect();
    let octets: u64 = flows.iter().map(|f| f.2).sum();
    let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default());
    let msg = d
        .decode(bytes::Bytes::from(common::flows_at(&flows)))
        .expect("decodes");
    let source = Arc::new(Source {
        exporter: "192.0.2.1:4739".into(),
        addr: "192.0.2.1".parse().expect("address"),
        tenant: "acme".into(),
    });
    redis.kill();
    assert_eq!(sink.write(&[Records::all(Arc::new(msg), source)]), 30);
    // Redis away: a write is tried each second and fails, counted.
    let t0 = Instant::now();
    while stats.sink_errors.load(Ordering::Relaxed) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no failed write counted"
        );
        sink.tick().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back (empty): the cells are written again, whole.
    redis.restart();
    let key = SeriesKey {
        tenant: "acme",
        stream: "acme/kept",
        interval_secs: 10,
        by: None,
    };
    let first = (now as i64 - 70_000).div_euclid(10_000);
    let keys: Vec<String> = (first..first + 10).map(|i| key.at(i)).collect();
    let t0 = Instant::now();
    let written = loop {
        sink.tick().await;
        if let Ok((cells, writers, errors)) = store.get("acme/kept", &keys, "nobody").await
            && !cells.is_empty()
        {
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(writers.len(), 1);
            break cells;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "never written again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sum: u64 = written
        .iter()
        .flat_map(|c| c.cells.iter().map(|(_, _, c)| c.octets))
        .sum();
    assert_eq!(sum, octets);

    // A writer that stops without closing (a node gone, or cut off from Redis) is named once
    // its last write is older than WRITER_STALE_MS; one that closed is not.
    let mut closing = SeriesSink::new(
        LiveOptions {
            interval_secs: 10,
            by: vec![],
            retention_secs: 3600,
            max_keys: 1000,
            forward_only: false,
        },
        registry.clone(),
        Arc::new(StreamStats::default()),
        Some((store.clone(), "acme/kept".into())),
    )
    .expect("sink");
    let msg = d
        .decode(bytes::Bytes::from(common::flows_at(&flows)))
        .expect("decodes");
    let source = Arc::new(Source {
        exporter: "192.0.2.2:4739".into(),
        addr: "192.0.2.2".parse().expect("address"),
        tenant: "acme".into(),
    });
    assert_eq!(closing.write(&[Records::all(Arc::new(msg), source)]), 30);
    closing.close().await;
    drop(sink);
    tokio::time::sleep(Duration::from_millis(WRITER_STALE_MS + 1500)).await;
    let (cells, writers, errors) = store.get("acme/kept", &keys, "nobody").await.expect("read");
    assert_eq!(writers.len(), 2);
    let sum: u64 = cells
        .iter()
        .flat_map(|c| c.cells.iter().map(|(_, _, c)| c.octets))
        .sum();
    assert_eq!(sum, 2 * octets);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("last wrote"), "{errors:?}");
}
