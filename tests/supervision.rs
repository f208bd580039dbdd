//! The collector's supervision, in process: sessions answer for their statistics by message, and
//! a failing (panicking) actor under the CollectorSupervisor is reported and costs nobody else.

use ipfixsvc::actors::collector::session::SessionMsg;
use ipfixsvc::actors::collector::{CollectorArgs, CollectorMsg, CollectorSupervisor, SessionEnv};
use ipfixsvc::actors::mediator::Streams;
use ipfixsvc::config::CollectorSettings;
use ipfixsvc::wire::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(RactorMessage)]
enum CrashMsg {
    Crash,
}

/// Stands in for a session with a bug: it panics on demand.
struct Crasher;

impl Actor for Crasher {
    type Msg = CrashMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<CrashMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<CrashMsg>,
        _msg: CrashMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        panic!("a bug in one session");
    }
}

async fn eventually<F: AsyncFnMut() -> bool>(mut f: F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_by_message_and_a_panicking_sibling_costs_nobody_else() {
    // No stream: records are decoded and counted, not written.
    let streams = Streams::default();
    let settings = CollectorSettings {
        tcp_listen: "127.0.0.1:0".into(),
        udp_listen: "127.0.0.1:0".into(),
        max_tcp_sessions: 3,
        ..CollectorSettings::default()
    };
    let env = SessionEnv::new(settings, Registry::builtin(), streams);
    let (collector, _) = Actor::spawn(
        Some("collector".into()),
        CollectorSupervisor,
        CollectorArgs { env },
    )
    .await
    .expect("collector starts");
    let (tcp, udp) = ractor::call!(collector, CollectorMsg::ListenAddrs).expect("addresses");
    let tcp = tcp.expect("TCP listener bound");
    assert!(udp.is_some());

    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("file");
    let half = {
        // The first 30 messages.
        let mut at = 0;
        for _ in 0..30 {
            at += u16::from_be_bytes([file[at + 2], file[at + 3]]) as usize;
        }
        at
    };
    let mut a = tokio::net::TcpStream::connect(tcp)
        .await
        .expect("connect a");
    let mut b = tokio::net::TcpStream::connect(tcp)
        .await
        .expect("connect b");
    a.write_all(&file[..half]).await.expect("a");
    b.write_all(&file[..half]).await.expect("b");

    let records = |s: ActorRef<SessionMsg>| async move {
        ractor::call!(s, SessionMsg::GetStats)
            .map(|st| st.data_records)
            .unwrap_or(0)
    };
    // Accepting and starting a session takes a moment: wait for both.
    assert!(
        eventually(async || ractor::call!(collector, CollectorMsg::Sessions)
            .map(|s| s.len())
            .unwrap_or(0)
            == 2)
        .await
    );
    let sessions = ractor::call!(collector, CollectorMsg::Sessions).expect("sessions");
    let first_half: u64 = {
        let mut d = ipfixsvc::wire::Decoder::new(Registry::builtin(), Default::default());
        ipfixsvc::wire::MessageReader::new(&file[..half], 65535)
            .map(|m| {
                d.decode(m.expect("frames").1)
                    .expect("decodes")
                    .data_records() as u64
            })
            .sum()
    };
    for s in &sessions {
        let s = s.clone();
        assert!(
            eventually(async || records(s.clone()).await == first_half).await,
            "first half decoded"
        );
    }

    // A sibling panics.
    let (crasher, _) = Actor::spawn_linked(
        Some("session/crasher".into()),
        Crasher,
        (),
        collector.get_cell(),
    )
    .await
    .expect("crasher");
    crasher.cast(CrashMsg::Crash).expect("cast");
    let failed = async || {
        ractor::call!(collector, CollectorMsg::Counters)
            .map(|c| c.failed_sessions)
            .unwrap_or(0)
    };
    assert!(eventually(async || failed().await == 1).await);

    // The others go on, and the listener still accepts.
    a.write_all(&file[half..]).await.expect("a rest");
    b.write_all(&file[half..]).await.expect("b rest");
    for s in &sessions {
        let s = s.clone();
        assert!(
            eventually(async || records(s.clone()).await == 3979).await,
            "the rest decoded after the crash"
        );
    }
    let c = tokio::net::TcpStream::connect(tcp).await;
    assert!(c.is_ok());
    assert!(
        eventually(async || ractor::call!(collector, CollectorMsg::Sessions)
            .map(|s| s.len())
            .unwrap_or(0)
            == 3)
        .await
    );
    // The session limit (3): a fourth connection is closed at once and counted.
    let mut d = tokio::net::TcpStream::connect(tcp)
        .await
        .expect("the listener accepts, then closes");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut d, &mut byte),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "over the limit: closed"
    );
    let counters = ractor::call!(collector, CollectorMsg::Counters).expect("counters");
    assert_eq!((counters.live_sessions, counters.refused_sessions), (3, 1));

    // A listener that stops is started again (with backoff), on the configured address (port 0
    // here: a new port).
    let listener = collector
        .get_children()
        .into_iter()
        .find(|c| c.get_name().as_deref() == Some(ipfixsvc::actors::collector::TCP_LISTENER))
        .expect("TCP listener");
    listener.stop(Some("test".into()));
    let back = async || {
        ractor::call!(collector, CollectorMsg::ListenAddrs)
            .is_ok_and(|(t, _)| t.is_some_and(|t| t != tcp))
    };
    assert!(eventually(back).await, "the TCP listener came back");
    collector.stop(None);
}

/// The good exporter's template message and one data message of five records (domain 9).
fn template_and_data() -> (Vec<u8>, Vec<u8>) {
    use ipfixsvc::wire::{FieldSpec, FieldValue, MessageBuilder, Plan, Template};
    let t = Template::data(300, vec![FieldSpec::new(2, 0, 8)]);
    let plan = Plan::compile(t.clone(), &Registry::builtin());
    let mut b = MessageBuilder::new(9, 1400);
    b.add_template(&t).expect("template");
    b.flush();
    let template = b.take_ready().remove(0);
    for i in 0..5 {
        b.add_record(&plan, &[FieldValue::Unsigned(i)])
            .expect("record");
    }
    b.flush();
    (template, b.take_ready().remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_cache_and_the_directory_are_restarted_and_found_by_name() {
    use ipfixsvc::actors::directory::DIRECTORY_NAME;
    use ipfixsvc::actors::node::{NodeArgs, NodeSupervisor};
    use ipfixsvc::actors::template_cache::TEMPLATE_CACHE;
    use ipfixsvc::config::{Role, Settings};
    let streams = Streams::default();
    let mut settings = Settings::default();
    settings.node.roles = vec![Role::Collector];
    // The default stream counts records and writes none (the test's stdout stays clean).
    settings.output.format = ipfixsvc::config::OutputFormat::Count;
    settings.collector.tcp_listen = "127.0.0.1:0".into();
    settings.collector.udp_listen = String::new();
    let args = NodeArgs {
        settings,
        registry: Registry::builtin(),
        streams,
    };
    let (_node, _) = Actor::spawn(Some("node".into()), NodeSupervisor, args)
        .await
        .expect("node");
    let collector: ActorRef<CollectorMsg> = ractor::registry::where_is("collector")
        .expect("collector")
        .into();
    let (tcp, _) = ractor::call!(collector, CollectorMsg::ListenAddrs).expect("addresses");
    let tcp = tcp.expect("tcp");
    let (template, data) = template_and_data();
    let mut a = tokio::net::TcpStream::connect(tcp).await.expect("a");
    a.write_all(&template).await.expect("a");
    a.write_all(&data).await.expect("a");
    // The cache and the directory die; the node starts them again under their names.
    for name in [TEMPLATE_CACHE, DIRECTORY_NAME] {
        let old = ractor::registry::where_is(name).expect(name);
        tokio::time::sleep(Duration::from_millis(200)).await;
        old.kill();
        assert!(
            eventually(async || ractor::registry::where_is(name)
                .is_some_and(|c| c.get_id() != old.get_id()))
            .await,
            "{name} restarted"
        );
    }
    // A second connection of the same exporter sends data only: decoded with the template the
    // first one defined, found through the new cache (the store outlived the old one).
    let mut b = tokio::net::TcpStream::connect(tcp).await.expect("b");
    b.write_all(&data).await.expect("b");
    let decoded = async || {
        let Ok(sessions) = ractor::call!(collector, CollectorMsg::Sessions) else {
            return false;
        };
        let mut total = 0;
        for s in sessions {
            total += ractor::call!(s, SessionMsg::GetStats)
                .map(|st| st.data_records)
                .unwrap_or(0);
        }
        total == 10
    };
    assert!(
        eventually(decoded).await,
        "B decoded with the shared template"
    );
    // The actor tree shows each restart and why.
    let tree = ipfixsvc::actors::actor_tree::tree("here").await;
    let children = tree["tree"]["children"].as_array().expect("children");
    for name in [TEMPLATE_CACHE, DIRECTORY_NAME] {
        let child = children
            .iter()
            .find(|c| c["name"] == name)
            .expect("in the tree");
        assert_eq!(child["restarts"], 1, "{child}");
        assert!(
            child["last_failure"]
                .as_str()
                .is_some_and(|f| f.contains("killed")),
            "{child}"
        );
    }
}
