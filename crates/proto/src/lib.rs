//! The agent's gRPC API, generated from `proto/agent.proto`.

/// `rustybalancer.v1`: messages, `deployment_agent_client` and `deployment_agent_server`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
    tonic::include_proto!("rustybalancer.v1");
}

pub use v1::*;
