//! A node's supervision tree as JSON, for `/debug/actors`: each actor's name, id, kind, node,
//! state and children, the restarts the NodeSupervisor counted with the last failure, and the
//! figures of its kind (a session's records and errors, the collector's queues, the cache's
//! templates, the job queue, a running job's progress).
//!
//! The shape is read from ractor (children, and the kind by the messages an actor takes); the
//! figures are asked of the actors by message, all at once, each with a short deadline, so one
//! busy actor shows `"figures": "no answer"` instead of holding up the page.

use super::cluster::ClusterMsg;
use super::collector::CollectorMsg;
use super::collector::session::SessionMsg;
use super::collector::tcp::TcpListenerMsg;
use super::collector::udp::UdpListenerMsg;
use super::directory::DirectoryMsg;
use super::jobs::directory::JobDirectoryMsg;
use super::jobs::runner::{ANALYSIS_PREFIX, RunMsg, TIME_SERIES_PREFIX};
use super::jobs::{JobMsg, JobSupervisorStatus};
use super::mediator::stream::StreamMsg;
use super::mediator::{MediatorMsg, StreamState};
use super::node::{NodeMsg, RestartInfo};
use super::template_cache::CacheMsg;
use super::tenants::TenantMsg;
use crate::api::ApiMsg;
use ractor::{ActorCell, ActorRef};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Children listed per actor at most (a collector may hold thousands of sessions).
pub const MAX_CHILDREN_SHOWN: usize = 500;

/// How long one actor may take to give its figures.
const FIGURES_WITHIN: Duration = Duration::from_millis(1000);

/// The kind of an actor, by the messages it takes; ractor_cluster's own actors (the node
/// server's sessions and proxies) by where they are.
fn kind(cell: &ActorCell, in_cluster_server: bool) -> &'static str {
    if !cell.get_id().is_local() {
        // ractor_cluster's stand-in for a peer's actor (a process group member over there).
        return "proxy of a peer's actor";
    }
    // The job actors share one message type: their names tell them apart.
    if cell.is_message_type_of::<RunMsg>() == Some(true) {
        return match cell.get_name() {
            Some(n) if n.starts_with(TIME_SERIES_PREFIX) => "TimeSeriesJob",
            Some(n) if n.starts_with(ANALYSIS_PREFIX) => "AnalysisJob",
            _ => "PcapConversionJob",
        };
    }
    macro_rules! by_message {
        ($($msg:ty => $kind:literal),* $(,)?) => {
            $(if cell.is_message_type_of::<$msg>() == Some(true) { return $kind; })*
        };
    }
    by_message!(
        NodeMsg => "NodeSupervisor",
        CacheMsg => "TemplateCache",
        DirectoryMsg => "SessionDirectory",
        ClusterMsg => "ClusterMember",
        ApiMsg => "ApiServer",
        TenantMsg => "TenantDirectory",
        CollectorMsg => "CollectorSupervisor",
        TcpListenerMsg => "TcpListener",
        UdpListenerMsg => "UdpListener",
        SessionMsg => "ExporterSession",
        JobMsg => "JobSupervisor",
        JobDirectoryMsg => "JobDirectory",
        MediatorMsg => "MediatorSupervisor",
        StreamMsg => "ExportStream",
    );
    if cell.get_name().as_deref() == Some("cluster/node-server") {
        "ractor_cluster NodeServer"
    } else if in_cluster_server {
        "ractor_cluster"
    } else {
        "unknown"
    }
}

/// An actor and the children it supervises. A child linked here but supervised elsewhere (the
/// cluster's node sessions link to the actors they serve) is left to its supervisor, so each
/// actor shows once.
fn shape(cell: &ActorCell, node: &str, in_cluster: bool, asks: &mut Vec<ActorCell>) -> Value {
    let k = kind(cell, in_cluster);
    let in_cluster = in_cluster || k.starts_with("ractor_cluster");
    let mut children: Vec<ActorCell> = cell
        .get_children()
        .into_iter()
        .filter(|c| {
            c.try_get_supervisor()
                .is_none_or(|s| s.get_id() == cell.get_id())
        })
        .collect();
    children.sort_by_key(|c| c.get_name().unwrap_or_default());
    let total = children.len();
    if matches!(
        k,
        "NodeSupervisor"
            | "ExporterSession"
            | "CollectorSupervisor"
            | "TemplateCache"
            | "JobSupervisor"
            | "MediatorSupervisor"
    ) {
        asks.push(cell.clone());
    }
    let shown: Vec<Value> = children
        .iter()
        .take(MAX_CHILDREN_SHOWN)
        .map(|c| shape(c, node, in_cluster, asks))
        .collect();
    let id = cell.get_id();
    let mut v = json!({
        "name": cell.get_name(),
        // A peer's ids count on their own: say so, or `0.6` here and there look alike.
        "id": if id.is_local() { id.to_string() } else { format!("remote {id}") },
        "kind": k,
        "node": node,
        "status": format!("{:?}", cell.get_status()),
        "children": shown,
    });
    if total > MAX_CHILDREN_SHOWN {
        v["children_not_shown"] = (total - MAX_CHILDREN_SHOWN).into();
    }
    v
}

/// What one actor says of itself, by kind.
async fn figures(cell: ActorCell) -> (String, Figures) {
    let id = cell.get_id().to_string();
    let ms = FIGURES_WITHIN.as_millis() as u64;
    let answer = if cell.is_message_type_of::<SessionMsg>() == Some(true) {
        let a: ActorRef<SessionMsg> = cell.into();
        ractor::call_t!(a, SessionMsg::GetStats, ms)
            .map(|s| {
                Figures::Own(json!({
                    "tenant": s.tenant, "messages": s.messages, "bytes": s.bytes,
                    "records": s.data_records + s.options_records, "errors": s.errors,
                    "lost": s.lost, "templates": s.templates + s.options_templates,
                }))
            })
            .ok()
    } else if cell.is_message_type_of::<CollectorMsg>() == Some(true) {
        let a: ActorRef<CollectorMsg> = cell.into();
        ractor::call_t!(a, CollectorMsg::Counters, ms)
            .map(|c| Figures::Own(serde_json::to_value(c).unwrap_or_default()))
            .ok()
    } else if cell.is_message_type_of::<CacheMsg>() == Some(true) {
        let a: ActorRef<CacheMsg> = cell.into();
        ractor::call_t!(a, CacheMsg::Status, ms)
            .map(|s| {
                Figures::Own(json!({
                    "templates": s.templates, "bytes": s.bytes, "store_healthy": s.store_healthy,
                    "unsynced": s.unsynced, "dropped_messages": s.dropped_messages,
                    "conflicts_live": s.conflicts_live,
                }))
            })
            .ok()
    } else if cell.is_message_type_of::<JobMsg>() == Some(true) {
        let a: ActorRef<JobMsg> = cell.into();
        ractor::call_t!(a, JobMsg::Status, ms)
            .map(Figures::Jobs)
            .ok()
    } else if cell.is_message_type_of::<MediatorMsg>() == Some(true) {
        let a: ActorRef<MediatorMsg> = cell.into();
        ractor::call_t!(a, MediatorMsg::Tree, ms)
            .map(Figures::Streams)
            .ok()
    } else if cell.is_message_type_of::<NodeMsg>() == Some(true) {
        let a: ActorRef<NodeMsg> = cell.into();
        ractor::call_t!(a, NodeMsg::Restarts, ms)
            .map(Figures::Restarts)
            .ok()
    } else {
        return (id, Figures::None);
    };
    (id, answer.unwrap_or(Figures::NoAnswer))
}

enum Figures {
    None,
    NoAnswer,
    Own(Value),
    /// The job queue's, and each running job's progress by its actor's id.
    Jobs(JobSupervisorStatus),
    /// The NodeSupervisor's count of its children's restarts, by name.
    Restarts(Vec<RestartInfo>),
    /// Each export stream's actor id, figures and last failure (the MediatorSupervisor's).
    Streams(Vec<(String, StreamState, Option<String>)>),
}

/// This node's tree with every actor's figures.
pub async fn tree(node: &str) -> Value {
    let Some(root) = ractor::registry::where_is("node") else {
        return json!({"node": node, "error": "no node actor (starting or stopping)"});
    };
    let mut asks = Vec::new();
    let mut tree = shape(&root, node, false, &mut asks);
    let answers = futures_util::future::join_all(asks.into_iter().map(figures)).await;
    let mut by_id: HashMap<String, Value> = HashMap::new();
    let mut by_name: HashMap<String, Value> = HashMap::new();
    for (id, f) in answers {
        match f {
            Figures::None => {}
            Figures::NoAnswer => {
                by_id.insert(id, json!("no answer"));
            }
            Figures::Own(v) => {
                by_id.insert(id, v);
            }
            Figures::Jobs(s) => {
                for (actor, job, progress) in &s.running {
                    by_id.insert(actor.clone(), json!({"job": job, "progress": progress}));
                }
                by_id.insert(
                    id,
                    json!({"queued": s.queued, "running": s.running.len(), "workers": s.workers, "queue": s.queue}),
                );
            }
            Figures::Streams(list) => {
                let total: u64 = list.iter().map(|(_, s, _)| s.records_in).sum();
                by_id.insert(id, json!({"streams": list.len(), "records_in": total}));
                for (actor, s, failure) in list {
                    by_name.insert(
                        format!("stream/{}", s.name),
                        json!({"restarts": s.restarts, "last_failure": failure}),
                    );
                    by_id.insert(
                        actor,
                        json!({
                            "queue_bytes": s.queue_bytes, "queue_capacity": s.queue_capacity,
                            "records_in": s.records_in, "records_out": s.records_out,
                            "filtered": s.filtered, "dropped": s.dropped,
                            "sink_errors": s.sink_errors, "breaker": s.breaker,
                        }),
                    );
                }
            }
            Figures::Restarts(list) => {
                for r in list {
                    by_name.insert(
                        r.name.clone(),
                        json!({"restarts": r.restarts, "last_failure": r.last_failure}),
                    );
                }
            }
        }
    }
    fill(&mut tree, &by_id, &by_name);
    json!({"node": node, "tree": tree})
}

fn fill(v: &mut Value, by_id: &HashMap<String, Value>, by_name: &HashMap<String, Value>) {
    if let Some(f) = v["id"].as_str().and_then(|id| by_id.get(id)) {
        v["figures"] = f.clone();
    }
    match v["name"].as_str().and_then(|n| by_name.get(n)) {
        Some(r) => {
            v["restarts"] = r["restarts"].clone();
            v["last_failure"] = r["last_failure"].clone();
        }
        None => v["restarts"] = 0.into(),
    }
    if let Some(children) = v["children"].as_array_mut() {
        for c in children {
            fill(c, by_id, by_name);
        }
    }
}
