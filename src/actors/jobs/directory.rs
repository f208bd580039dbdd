//! JobDirectory: one per JobSupervisor (its child), in the `ractor::pg` group `job-directories`,
//! so a cancel
//! sent to any node reaches the node that runs the job (records are shared through the store,
//! but a running job can only be stopped where it runs). Its messages cross nodes: payloads are
//! bincode with a format byte, and bytes from another version decode to an error value.
//!
//! Messages: `Cancel` (a tenant's job, cancelled if this node holds it; the local supervisor
//! answers, never forwarding again, so requests cannot loop between nodes).

use super::{CancelError, Cancelled, JobMsg};
use crate::store::codec;
use crate::store::jobs::JobId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{BytesConvertable, RactorClusterMessage};

pub const JOB_DIRECTORY_GROUP: &str = "job-directories";

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    codec::decode::<_, { 1 << 20 }>(bytes)
        .map_err(|e| format!("unreadable message from a peer: {e}"))
}

/// Which job to cancel. A request that cannot be read names no job (and so finds none).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CancelRequest {
    pub tenant: String,
    pub id: Option<JobId>,
}

impl BytesConvertable for CancelRequest {
    fn into_bytes(self) -> Vec<u8> {
        codec::encode(&self)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        decode(&bytes).unwrap_or_default()
    }
}

/// A directory's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CancelAnswer(pub Result<Cancelled, CancelError>);

impl BytesConvertable for CancelAnswer {
    fn into_bytes(self) -> Vec<u8> {
        codec::encode(&self)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        CancelAnswer(
            decode(&bytes)
                .map_err(CancelError::Peer)
                .and_then(|a: Self| a.0),
        )
    }
}

#[derive(RactorClusterMessage)]
pub enum JobDirectoryMsg {
    #[rpc]
    Cancel(CancelRequest, RpcReplyPort<CancelAnswer>),
}

pub struct JobDirectory;

impl Actor for JobDirectory {
    type Msg = JobDirectoryMsg;
    /// The supervisor this directory answers for.
    type State = ActorRef<JobMsg>;
    type Arguments = ActorRef<JobMsg>;

    async fn pre_start(
        &self,
        myself: ActorRef<JobDirectoryMsg>,
        supervisor: ActorRef<JobMsg>,
    ) -> Result<ActorRef<JobMsg>, ActorProcessingErr> {
        ractor::pg::join(JOB_DIRECTORY_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(supervisor)
    }

    async fn handle(
        &self,
        _myself: ActorRef<JobDirectoryMsg>,
        msg: JobDirectoryMsg,
        supervisor: &mut ActorRef<JobMsg>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            JobDirectoryMsg::Cancel(request, reply) => {
                // From a task: the supervisor may be busy; this directory keeps answering.
                let sup = supervisor.clone();
                tokio::spawn(async move {
                    let answer = match request.id {
                        Some(id) => ractor::call_t!(
                            sup,
                            JobMsg::CancelHere,
                            2_000,
                            request.tenant.clone(),
                            id
                        )
                        .unwrap_or(Err(CancelError::NotFound)),
                        None => Err(CancelError::NotFound),
                    };
                    let _ = reply.send(CancelAnswer(answer));
                });
            }
        }
        Ok(())
    }
}

/// Asks every other directory (`own` is this supervisor's) to cancel the job: the one whose
/// supervisor holds it answers.
pub async fn cancel_elsewhere(
    own: Option<ractor::ActorId>,
    tenant: String,
    id: JobId,
) -> Result<Cancelled, CancelError> {
    let peers: Vec<_> = ractor::pg::get_members(&JOB_DIRECTORY_GROUP.to_string())
        .into_iter()
        .filter(|m| Some(m.get_id()) != own)
        .collect();
    let answers = futures_util::future::join_all(peers.into_iter().map(|member| {
        let request = CancelRequest {
            tenant: tenant.clone(),
            id: Some(id),
        };
        async move {
            let peer: ActorRef<JobDirectoryMsg> = member.into();
            ractor::call_t!(peer, JobDirectoryMsg::Cancel, 3_000, request)
        }
    }))
    .await;
    let mut out = Err(CancelError::NotFound);
    for answer in answers {
        match answer {
            Ok(CancelAnswer(Err(CancelError::NotFound))) | Err(_) => {}
            Ok(CancelAnswer(found)) => out = found,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_nodes_and_fail_safe() {
        let id = JobId::new();
        let req = CancelRequest {
            tenant: "t".into(),
            id: Some(id),
        };
        assert_eq!(CancelRequest::from_bytes(req.clone().into_bytes()), req);
        let answer = CancelAnswer(Ok(Cancelled::Cancelling));
        assert_eq!(
            CancelAnswer::from_bytes(answer.clone().into_bytes()),
            answer
        );
        // Another version's bytes: no job named, and an error answer, never a panic.
        assert_eq!(CancelRequest::from_bytes(vec![9, 1, 2]).id, None);
        assert!(matches!(
            CancelAnswer::from_bytes(vec![codec::FORMAT, 0xff, 0xff]).0,
            Err(CancelError::Peer(_))
        ));
    }
}
