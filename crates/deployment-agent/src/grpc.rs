//! The agent's gRPC API (`proto/agent.proto`): queue watch, status, scale, drain, and the
//! balancers' load-report stream; plus the standard gRPC health service.

use std::{
    collections::HashMap,
    pin::Pin,
    time::{Duration, Instant},
};

use futures_util::{Stream, StreamExt};
use proto::v1::{
    self as pb,
    deployment_agent_client::DeploymentAgentClient,
    deployment_agent_server::{DeploymentAgent, DeploymentAgentServer},
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    agent::Agent,
    state::{BackendReport, BalancerReport},
};

pub struct AgentService {
    agent: Agent,
}

impl AgentService {
    pub fn server(agent: Agent) -> DeploymentAgentServer<Self> {
        DeploymentAgentServer::new(Self { agent })
    }

    /// Mutating calls (`Scale`, `Drain`, `ReportLoad`) need `authorization: Bearer <AGENT_TOKEN>`
    /// metadata; checked before anything of the call is read.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        crate::auth::check(&self.agent.config().access(), given)
            .map_err(|refusal| Status::unauthenticated(refusal.message()))
    }

    /// On a follower, a client of the leader for a mutating call (`None` on the leader).
    async fn leader_client(
        &self,
    ) -> Result<Option<DeploymentAgentClient<tonic::transport::Channel>>, Status> {
        if self.agent.is_leading() {
            return Ok(None);
        }
        let leader = self
            .agent
            .leader()
            .filter(|leader| leader.id != self.agent.id())
            .ok_or_else(|| {
                Status::unavailable(
                    "this agent is a follower and no leader is elected right now; try again in a moment",
                )
            })?;
        let endpoint = tonic::transport::Endpoint::from_shared(leader.grpc_url.clone())
            .map_err(|err| Status::unavailable(format!("the leader's address is invalid: {err}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|err| {
            Status::unavailable(format!(
                "the leader ({}) cannot be reached: {err}",
                leader.id
            ))
        })?;
        Ok(Some(DeploymentAgentClient::new(channel)))
    }
}

/// The same call for the leader, with the caller's token.
fn forwarded<T>(metadata: &tonic::metadata::MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = metadata.get("authorization") {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

pub fn category(category: common::queue::Category) -> pb::Category {
    use common::queue::Category as C;
    match category {
        C::Init => pb::Category::Init,
        C::Low => pb::Category::Lu,
        C::Medium => pb::Category::Mu,
        C::High => pb::Category::Hu,
        C::Sundown => pb::Category::Sundown,
    }
}

pub fn item(item: &common::queue::QueueItem) -> pb::QueueItem {
    pb::QueueItem {
        id: item.id.clone(),
        dns_name: item.dns_name.clone(),
        address: item.address.clone(),
        score: item.score,
        utilization_category: category(item.utilization_category) as i32,
        in_flight: item.in_flight,
        cpu_score: item.cpu_score,
        memory_score: item.memory_score,
        network_score: item.network_score,
        availability_score: item.availability_score,
        concurrency: item.concurrency,
    }
}

pub fn snapshot(snapshot: &common::queue::QueueSnapshot) -> pb::QueueSnapshot {
    pb::QueueSnapshot {
        version: snapshot.version,
        seq: snapshot.seq,
        epoch: snapshot.epoch,
        timestamp_ms: snapshot.timestamp_ms,
        items: snapshot.items.iter().map(item).collect(),
    }
}

/// A balancer's report as the world keeps it, received now. Expected seconds that are not a
/// number >= 0 count as 0.
fn balancer_report(report: &pb::LoadReport) -> BalancerReport {
    let seconds = |s: f64| if s.is_finite() && s > 0.0 { s } else { 0.0 };
    let mut backends: HashMap<String, BackendReport> = HashMap::new();
    for backend in &report.backends {
        // One entry per address (a balancer sends each once; sum should one come twice).
        let entry = backends.entry(backend.address.clone()).or_default();
        entry.in_flight = entry.in_flight.saturating_add(backend.in_flight);
        entry.work_seconds += seconds(backend.work_seconds);
    }
    BalancerReport {
        at: Instant::now(),
        queued_without_backend: report.queued_without_backend,
        queued_for_slot: report.queued_for_slot,
        queued_work_seconds: seconds(report.queued_work_seconds),
        backends,
    }
}

type QueueStream = Pin<Box<dyn Stream<Item = Result<pb::QueueSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl DeploymentAgent for AgentService {
    type WatchQueueStream = QueueStream;

    async fn watch_queue(
        &self,
        _: Request<pb::WatchQueueRequest>,
    ) -> Result<Response<QueueStream>, Status> {
        let freshness = self.agent.relay_freshness();
        if self.agent.queue_stale() {
            return Err(Status::unavailable(format!(
                "this agent follows and has not heard the leader's queue for over {:?}; use another agent",
                freshness.stale_after()
            )));
        }
        let shutdown = self.agent.shutdown_token();
        let mut stale = freshness.subscribe();
        // Ends on shutdown, or when this follower loses the leader's queue (the balancer
        // then follows another agent).
        let ended = async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                true = crate::relay::turns_stale(&mut stale) => {}
            }
        };
        let stream = tokio_stream::wrappers::WatchStream::new(self.agent.subscribe())
            .map(|current| Ok(snapshot(&current)))
            .take_until(ended);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let bounds = self.agent.bounds();
        let current = self.agent.snapshot();
        Ok(Response::new(pb::Status {
            containers: current.items.iter().map(item).collect(),
            desired_replicas: bounds.desired_replicas as u32,
            min_replicas: bounds.min_replicas as u32,
            max_replicas: bounds.max_replicas as u32,
            mean_utilization: self.agent.mean_utilization(),
        }))
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ScaleResponse>, Status> {
        self.authorize(&request)?;
        if let Some(mut leader) = self.leader_client().await? {
            let (metadata, _, message) = request.into_parts();
            return leader.scale(forwarded(&metadata, message)).await;
        }
        let replicas = request.into_inner().replicas as usize;
        self.agent
            .check_limit("replicas", Some(replicas))
            .map_err(Status::invalid_argument)?;
        let target = self.agent.request_replicas(replicas);
        Ok(Response::new(pb::ScaleResponse {
            desired_replicas: target as u32,
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.authorize(&request)?;
        if let Some(mut leader) = self.leader_client().await? {
            let (metadata, _, message) = request.into_parts();
            return leader.drain(forwarded(&metadata, message)).await;
        }
        let key = request.into_inner().container_id;
        match self.agent.drain(&key) {
            Some(_) => Ok(Response::new(pb::DrainResponse { draining: true })),
            None => Err(Status::not_found(format!(
                "no single container matches `{key}`"
            ))),
        }
    }

    async fn report_load(
        &self,
        request: Request<Streaming<pb::LoadReport>>,
    ) -> Result<Response<pb::ReportLoadResponse>, Status> {
        self.authorize(&request)?;
        let shutdown = self.agent.shutdown_token();
        let mut reports = request.into_inner();
        loop {
            // The stream is endless while the balancer runs: it ends here on shutdown, else
            // tonic's graceful stop would wait for it forever.
            let report = tokio::select! {
                () = shutdown.cancelled() => {
                    return Err(Status::unavailable("the agent is shutting down"));
                }
                report = reports.message() => report?,
            };
            let Some(report) = report else { break };
            let id = if report.balancer_id.is_empty() {
                "anonymous"
            } else {
                report.balancer_id.as_str()
            };
            self.agent.report_load(id, balancer_report(&report));
        }
        Ok(Response::new(pb::ReportLoadResponse {}))
    }
}
